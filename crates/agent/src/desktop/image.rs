//! Frames: RGB pixels captured from the display, scaled down by area
//! averaging and encoded as PNG.

/// An RGB image, 3 bytes a pixel, rows top to bottom without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgb {
    /// The pixel at `(x, y)`.
    #[cfg(test)]
    pub fn at(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// This image scaled to `width` x `height` (no larger than it), each
    /// target pixel the average of the source pixels its area covers.
    pub fn scale_down(&self, width: u32, height: u32) -> Rgb {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let source = Pixels {
            data: &self.pixels,
            width: self.width,
            height: self.height,
            bytes_per_pixel: 3,
            rgb: [0, 1, 2],
        };
        source.scale_down(width, height)
    }

    /// The PNG encoding (8-bit RGB, fast deflate: screens compress well).
    pub fn to_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::with_capacity(self.pixels.len() / 8);
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.pixels)?;
        w.finish()?;
        Ok(out)
    }
}

/// Pixels in memory: `bytes_per_pixel` bytes each, rows without padding,
/// red, green and blue at the byte offsets `rgb` of a pixel.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub bytes_per_pixel: usize,
    pub rgb: [usize; 3],
}

impl Pixels<'_> {
    /// An RGB image of `width` x `height` (clamped to this size), each
    /// pixel the average of the source pixels its area covers: scaling
    /// and conversion in one pass over the source.
    pub fn scale_down(&self, width: u32, height: u32) -> Rgb {
        let (width, height) = (width.clamp(1, self.width), height.clamp(1, self.height));
        let bpp = self.bytes_per_pixel;
        // Source column span of every target column, computed once.
        let cols: Vec<(usize, usize)> = (0..width).map(|x| span(x, width, self.width)).collect();
        let stride = self.width as usize * bpp;
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        let mut sums = vec![0u32; width as usize * 3];
        let [r, g, b] = self.rgb;
        for y in 0..height {
            let (y0, y1) = span(y, height, self.height);
            sums.iter_mut().for_each(|s| *s = 0);
            for row in self.data[y0 * stride..y1 * stride].chunks_exact(stride) {
                for (t, &(x0, x1)) in cols.iter().enumerate() {
                    for px in row[x0 * bpp..x1 * bpp].chunks_exact(bpp) {
                        sums[t * 3] += u32::from(px[r]);
                        sums[t * 3 + 1] += u32::from(px[g]);
                        sums[t * 3 + 2] += u32::from(px[b]);
                    }
                }
            }
            let rows = (y1 - y0) as u32;
            for (t, &(x0, x1)) in cols.iter().enumerate() {
                let n = rows * (x1 - x0) as u32;
                for c in 0..3 {
                    pixels.push(((sums[t * 3 + c] + n / 2) / n) as u8);
                }
            }
        }
        Rgb {
            width,
            height,
            pixels,
        }
    }
}

/// The source range `[a, b)` (never empty) that target index `i` of `n`
/// covers in a source of length `len >= n`.
fn span(i: u32, n: u32, len: u32) -> (usize, usize) {
    let a = (u64::from(i) * u64::from(len) / u64::from(n)) as usize;
    let b = (u64::from(i + 1) * u64::from(len) / u64::from(n)) as usize;
    (a, b.max(a + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Rgb {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                pixels.extend(f(x, y));
            }
        }
        Rgb {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn scaling_averages_areas() {
        // Left half black, right half white; halving keeps the split.
        let src = image(8, 4, |x, _| if x < 4 { [0; 3] } else { [255; 3] });
        let half = src.scale_down(4, 2);
        assert_eq!((half.width, half.height), (4, 2));
        assert_eq!(half.at(1, 1), [0; 3]);
        assert_eq!(half.at(2, 0), [255; 3]);
        // A 2x2 checker of 0/200 averages to 100.
        let checker = image(2, 2, |x, y| [if (x + y) % 2 == 0 { 0 } else { 200 }; 3]);
        assert_eq!(checker.scale_down(1, 1).at(0, 0), [100; 3]);
        // Odd ratios cover every source pixel once.
        let src = image(1280, 800, |_, _| [255, 0, 0]);
        let small = src.scale_down(1024, 640);
        assert!(small.pixels.chunks(3).all(|p| p == [255, 0, 0]));
        assert_eq!(src.scale_down(5000, 5000), src);
        // Four bytes a pixel, blue first (an X server's usual layout).
        let bgrx: Vec<u8> = (0..8 * 4).flat_map(|_| [30, 20, 10, 0]).collect();
        let raw = Pixels {
            data: &bgrx,
            width: 8,
            height: 4,
            bytes_per_pixel: 4,
            rgb: [2, 1, 0],
        };
        let small = raw.scale_down(2, 1);
        assert_eq!((small.width, small.height), (2, 1));
        assert_eq!(small.pixels, [10, 20, 30, 10, 20, 30]);
    }

    #[test]
    fn png_decodes_back_to_the_pixels() {
        let src = image(37, 11, |x, y| [x as u8, y as u8, (x * y) as u8]);
        let png = src.to_png().unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (37, 11));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &src.pixels[..]);
    }
}
