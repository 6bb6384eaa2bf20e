//! Images of relevance maps: a diverging red (positive) / blue (negative) colormap, white at
//! zero, scaled symmetrically by the largest absolute value, as the study's heatmap tables.

use anyhow::{Context, Result};

/// PNG bytes of a `side x side` row-major map, each value drawn as a `scale x scale` block.
pub fn heatmap_png(map: &[f32], side: u32, scale: u32) -> Result<Vec<u8>> {
    let peak = map.iter().fold(0f32, |m, v| m.max(v.abs()));
    let size = side * scale;
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        let v = map[((y / scale) * side + x / scale) as usize];
        // RED_BLUE runs red (0) → white (0.5) → blue (1): positive relevance is red.
        let t = if peak > 0.0 { 0.5 - 0.5 * (v / peak) as f64 } else { 0.5 };
        let c = colorous::RED_BLUE.eval_continuous(t.clamp(0.0, 1.0));
        image::Rgb([c.r, c.g, c.b])
    });
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding a PNG")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_is_red_negative_blue_zero_white() {
        let png = heatmap_png(&[1.0, -1.0, 0.0, 0.5], 2, 3).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (6, 6));
        let [r, _, b] = img.get_pixel(0, 0).0;
        assert!(r > 90 && b < 60, "positive: {:?}", img.get_pixel(0, 0));
        let [r, _, b] = img.get_pixel(3, 0).0;
        assert!(b > 90 && r < 60, "negative: {:?}", img.get_pixel(3, 0));
        let [r, g, b] = img.get_pixel(0, 3).0;
        assert!(r > 230 && g > 230 && b > 230, "zero: {:?}", img.get_pixel(0, 3));
    }
}
