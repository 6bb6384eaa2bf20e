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

/// The largest absolute value of a map: the scale at which it fills the colormap.
pub fn peak(map: &[f32]) -> f32 {
    map.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The colour of relevance `v` on a symmetric scale of ±`peak`: red (positive) through white
/// (zero) to blue (negative).
fn relevance_colour(v: f32, peak: f32) -> image::Rgb<u8> {
    // RED_BLUE runs red (0) → white (0.5) → blue (1): positive relevance is red.
    let t = if peak > 0.0 {
        0.5 - 0.5 * f64::from(v / peak)
    } else {
        0.5
    };
    let c = colorous::RED_BLUE.eval_continuous(t.clamp(0.0, 1.0));
    image::Rgb([c.r, c.g, c.b])
}

/// PNG bytes of a `side x side` row-major map on the scale ±`peak` (values beyond it
/// saturate), each value drawn as a `scale x scale` block.
pub fn heatmap_png(map: &[f32], side: u32, scale: u32, peak: f32) -> Result<Vec<u8>> {
    let size = side * scale;
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        relevance_colour(map[((y / scale) * side + x / scale) as usize], peak)
    });
    encode_png(&image)
}

/// PNG bytes of the relevance colour bar, `width x height`: +peak (red) at the top, 0 (white)
/// in the middle, −peak (blue) at the bottom.
pub fn colour_bar_png(width: u32, height: u32) -> Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(width, height, |_, y| {
        let v = 1.0 - 2.0 * y as f32 / (height - 1).max(1) as f32;
        relevance_colour(v, 1.0)
    });
    encode_png(&image)
}

/// 3 x 5 pixel glyphs of the characters a scale label needs, one row of 3 bits per line (the
/// high bit leftmost).
const GLYPHS: [(char, [u8; 5]); 15] = [
    ('0', [7, 5, 5, 5, 7]),
    ('1', [2, 6, 2, 2, 7]),
    ('2', [7, 1, 7, 4, 7]),
    ('3', [7, 1, 3, 1, 7]),
    ('4', [5, 5, 7, 1, 1]),
    ('5', [7, 4, 7, 1, 7]),
    ('6', [7, 4, 7, 5, 7]),
    ('7', [7, 1, 2, 2, 2]),
    ('8', [7, 5, 7, 5, 7]),
    ('9', [7, 5, 7, 1, 7]),
    ('.', [0, 0, 0, 0, 2]),
    ('-', [0, 0, 7, 0, 0]),
    ('+', [0, 2, 7, 2, 0]),
    ('e', [0, 7, 7, 4, 7]),
    (' ', [0, 0, 0, 0, 0]),
];

/// Draws `text` in black with its top left at (x, y), each glyph pixel `dot x dot`.
fn draw_text(image: &mut image::RgbImage, text: &str, x: u32, y: u32, dot: u32) {
    for (k, ch) in text.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(c, _)| *c == ch) else {
            continue;
        };
        for (r, bits) in rows.iter().enumerate() {
            for c in 0..3u32 {
                if bits & (4 >> c) == 0 {
                    continue;
                }
                for dy in 0..dot {
                    for dx in 0..dot {
                        let (px, py) = (x + (k as u32 * 4 + c) * dot + dx, y + r as u32 * dot + dy);
                        if px < image.width() && py < image.height() {
                            image.put_pixel(px, py, image::Rgb([0, 0, 0]));
                        }
                    }
                }
            }
        }
    }
}

/// PNG bytes of a `side x side` map at `scale` on its own scale ±peak, with the colour bar to
/// its right labelled +peak, 0 and −peak: a heatmap that says what its colours mean.
pub fn heatmap_with_bar_png(map: &[f32], side: u32, scale: u32) -> Result<Vec<u8>> {
    let peak = peak(map);
    let size = side * scale;
    let (bar_x, bar_w, dot) = (size + 8, 14, 2);
    let label = |v: f32| format!("{v:+.2e}").replace("e0", "e").replace("e-0", "e-");
    let labels = [label(peak), "0".to_string(), label(-peak)];
    let text_w = labels
        .iter()
        .map(|l| l.len() as u32 * 4 * dot)
        .max()
        .unwrap_or(0);
    let width = bar_x + bar_w + 6 + text_w;
    let mut image = image::RgbImage::from_pixel(width, size, image::Rgb([255, 255, 255]));
    for y in 0..size {
        for x in 0..size {
            image.put_pixel(
                x,
                y,
                relevance_colour(map[((y / scale) * side + x / scale) as usize], peak),
            );
        }
        let v = 1.0 - 2.0 * y as f32 / (size - 1).max(1) as f32;
        for x in bar_x..bar_x + bar_w {
            image.put_pixel(x, y, relevance_colour(v, 1.0));
        }
    }
    let glyph_h = 5 * dot;
    let text_x = bar_x + bar_w + 6;
    draw_text(&mut image, &labels[0], text_x, 0, dot);
    draw_text(&mut image, &labels[1], text_x, (size - glyph_h) / 2, dot);
    draw_text(&mut image, &labels[2], text_x, size - glyph_h, dot);
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

/// PNG bytes of the contour plots' colour scale, `width x height`: `levels` bands of viridis
/// from low (left) to high (right).
pub fn bands_bar_png(levels: usize, width: u32, height: u32) -> Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(width, height, |x, _| {
        let level = (x as usize * levels / width as usize).min(levels - 1);
        let c = colorous::VIRIDIS.eval_rational(level, levels);
        image::Rgb([c.r, c.g, c.b])
    });
    encode_png(&image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The explained map beside its colour bar: red at the top, blue at the bottom, and the
    /// labels drawn in black beside it.
    #[test]
    fn a_heatmap_carries_its_colour_bar_and_scale() {
        let map: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) * 1e-3).collect();
        let png = heatmap_with_bar_png(&map, 4, 10).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.height(), 40);
        let bar = 40 + 8 + 7;
        let [r, _, b] = img.get_pixel(bar, 0).0;
        assert!(
            r > 90 && b < 60,
            "top of the bar: {:?}",
            img.get_pixel(bar, 0)
        );
        let [r, _, b] = img.get_pixel(bar, 39).0;
        assert!(
            b > 90 && r < 60,
            "bottom of the bar: {:?}",
            img.get_pixel(bar, 39)
        );
        let black = (bar + 8..img.width())
            .flat_map(|x| (0..40).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
            .count();
        assert!(black > 20, "no scale labels drawn ({black} black pixels)");
        assert_eq!(format!("{:+.2e}", 8e-3f32).replace("e-0", "e-"), "+8.00e-3");
    }

    #[test]
    fn positive_is_red_negative_blue_zero_white() {
        let png = heatmap_png(&[1.0, -1.0, 0.0, 0.5], 2, 3, 1.0).unwrap();
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
