//! The report's images: relevance maps (a diverging red (positive) / blue (negative) colormap,
//! white at zero, scaled symmetrically by the largest absolute value, as the study's heatmap
//! tables), patches in true colour, and contour plots of 2D loss landscapes.

use anyhow::{Context, Result};

fn encode_png(image: &image::RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .context("encoding a PNG")?;
    Ok(bytes)
}

/// PNG bytes of a `side x side` row-major map, each value drawn as a `scale x scale` block.
pub fn heatmap_png(map: &[f32], side: u32, scale: u32) -> Result<Vec<u8>> {
    let peak = map.iter().fold(0f32, |m, v| m.max(v.abs()));
    let size = side * scale;
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        let v = map[((y / scale) * side + x / scale) as usize];
        // RED_BLUE runs red (0) → white (0.5) → blue (1): positive relevance is red.
        let t = if peak > 0.0 {
            0.5 - 0.5 * (v / peak) as f64
        } else {
            0.5
        };
        let c = colorous::RED_BLUE.eval_continuous(t.clamp(0.0, 1.0));
        image::Rgb([c.r, c.g, c.b])
    });
    encode_png(&image)
}

/// PNG bytes of a true-colour image from three bands (red, green, blue) of `side x side` values,
/// each stretched linearly between its own 2nd and 98th percentile (robust to a few saturated or
/// dark pixels), each value drawn as a `scale x scale` block.
pub fn true_colour_png(
    red: &[u16],
    green: &[u16],
    blue: &[u16],
    side: u32,
    scale: u32,
) -> Result<Vec<u8>> {
    let n = (side * side) as usize;
    anyhow::ensure!(
        red.len() == n && green.len() == n && blue.len() == n,
        "three bands of {side}x{side} values expected"
    );
    let stretch = |band: &[u16]| -> Vec<u8> {
        let mut sorted = band.to_vec();
        sorted.sort_unstable();
        let (lo, hi) = (
            sorted[n * 2 / 100] as f64,
            sorted[(n * 98 / 100).min(n - 1)] as f64,
        );
        let span = (hi - lo).max(1.0);
        band.iter()
            .map(|&v| ((v as f64 - lo) / span * 255.0).clamp(0.0, 255.0).round() as u8)
            .collect()
    };
    let (r, g, b) = (stretch(red), stretch(green), stretch(blue));
    let size = side * scale;
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        let i = ((y / scale) * side + x / scale) as usize;
        image::Rgb([r[i], g[i], b[i]])
    });
    encode_png(&image)
}

/// A filled contour plot of an `n x n` grid (`values[i * n + j]` at α index i, β index j) as a
/// `size x size` PNG: α runs left to right, β bottom to top; values between `lo` and `hi` fall in
/// `levels` colour bands (viridis, dark = low), band edges drawn darker. Callers pass one
/// `lo`, `hi` to several plots to put them on one scale.
pub fn contour_png(
    values: &[f64],
    n: usize,
    lo: f64,
    hi: f64,
    levels: usize,
    size: u32,
) -> Result<Vec<u8>> {
    anyhow::ensure!(
        n >= 2 && values.len() == n * n,
        "a grid of n x n values (n >= 2) expected"
    );
    let at = |x: f64, y: f64| -> f64 {
        // Bilinear between the four grid values around (x, y) in grid units.
        let (i0, j0) = (
            (x.floor() as usize).min(n - 2),
            (y.floor() as usize).min(n - 2),
        );
        let (fx, fy) = (x - i0 as f64, y - j0 as f64);
        let v = |i: usize, j: usize| values[i * n + j];
        v(i0, j0) * (1.0 - fx) * (1.0 - fy)
            + v(i0 + 1, j0) * fx * (1.0 - fy)
            + v(i0, j0 + 1) * (1.0 - fx) * fy
            + v(i0 + 1, j0 + 1) * fx * fy
    };
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let scale = (n - 1) as f64 / (size - 1).max(1) as f64;
    // Each pixel's colour band, row-major from the top row.
    let bands: Vec<usize> = (0..size * size)
        .map(|k| {
            let (px, py) = (k % size, k / size);
            let v = at(px as f64 * scale, (size - 1 - py) as f64 * scale);
            (((v - lo) / span * levels as f64).floor().max(0.0) as usize).min(levels - 1)
        })
        .collect();
    let level = |x: u32, y: u32| bands[(y * size + x) as usize];
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        let l = level(x, y);
        let edge = (x + 1 < size && level(x + 1, y) != l) || (y + 1 < size && level(x, y + 1) != l);
        let c = colorous::VIRIDIS.eval_rational(l, levels);
        let dim = |v: u8| if edge { (v as f64 * 0.55) as u8 } else { v };
        image::Rgb([dim(c.r), dim(c.g), dim(c.b)])
    });
    encode_png(&image)
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
        assert!(
            r > 230 && g > 230 && b > 230,
            "zero: {:?}",
            img.get_pixel(0, 3)
        );
    }

    #[test]
    fn contours_put_low_values_dark_and_draw_band_edges() {
        // A bowl: low in the centre of a 5x5 grid.
        let values: Vec<f64> = (0..25)
            .map(|k| ((k / 5) as f64 - 2.0).powi(2) + ((k % 5) as f64 - 2.0).powi(2))
            .collect();
        let png = contour_png(&values, 5, 0.0, 8.0, 6, 50).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let brightness = |x, y| img.get_pixel(x, y).0.iter().map(|&c| c as u32).sum::<u32>();
        assert!(
            brightness(25, 25) < brightness(2, 2),
            "centre {} vs corner {}",
            brightness(25, 25),
            brightness(2, 2)
        );
        assert!(contour_png(&values, 4, 0.0, 1.0, 6, 50).is_err());
    }

    #[test]
    fn true_colour_stretches_each_band_between_its_percentiles() {
        // 10x10: red rises along x, green is flat, blue has one saturated pixel.
        let red: Vec<u16> = (0..100).map(|i| 100 + (i % 10) * 50).collect();
        let green = vec![700u16; 100];
        let mut blue = vec![300u16; 100];
        blue[55] = 60_000;
        let png = true_colour_png(&red, &green, &blue, 10, 1).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 0).0[0], 0);
        assert_eq!(img.get_pixel(9, 0).0[0], 255);
        // The saturated pixel does not darken the rest of the blue band.
        assert_eq!(img.get_pixel(5, 5).0[2], 255);
        assert_eq!(img.get_pixel(0, 0).0[2], 0);
    }
}
