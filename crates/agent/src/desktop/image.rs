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

    /// The PNG encoding: 8-bit RGB, the "up" filter and fdeflate's fastest
    /// mode. Screens (flat areas, repeated rows) compress well with these;
    /// choosing a filter per row (`Compression::Fast`) cost the guest
    /// about 30 ms more at 1280x800 on the qemu engine here, for files
    /// about 10 % smaller.
    pub fn to_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::with_capacity(self.pixels.len() / 8);
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fastest);
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
        if self.bytes_per_pixel == 4 && self.rgb == [2, 1, 0] {
            self.scale_down_bgrx(width, height)
        } else {
            self.scale_down_any(width, height)
        }
    }

    /// [`Pixels::scale_down`] for any layout, `width` and `height` clamped.
    fn scale_down_any(&self, width: u32, height: u32) -> Rgb {
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

impl Pixels<'_> {
    /// [`Pixels::scale_down`] for the usual X layout (B, G, R, X in
    /// memory), with the fewest instructions per source pixel: the pixel
    /// is read as one little-endian word and its channels summed in two
    /// words, red and blue 32 bits apart in one, green in the other. On
    /// the qemu engine, where every guest instruction is emulated, this
    /// scaled 1280x800 to 1024x640 in 90-115 ms against 115-120 ms for
    /// the general loop. A lane holds 2^24 pixels of 255, far more than
    /// any target pixel covers.
    fn scale_down_bgrx(&self, width: u32, height: u32) -> Rgb {
        let cols: Vec<(usize, usize)> = (0..width).map(|x| span(x, width, self.width)).collect();
        let stride = self.width as usize * 4;
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        let mut red_blue = vec![0u64; width as usize];
        let mut green = vec![0u64; width as usize];
        for y in 0..height {
            let (y0, y1) = span(y, height, self.height);
            red_blue.fill(0);
            green.fill(0);
            for row in self.data[y0 * stride..y1 * stride].chunks_exact(stride) {
                for (t, &(x0, x1)) in cols.iter().enumerate() {
                    let (mut rb, mut g) = (0u64, 0u64);
                    for px in row[x0 * 4..x1 * 4].chunks_exact(4) {
                        let v = u32::from_le_bytes([px[0], px[1], px[2], px[3]]);
                        rb += (u64::from(v & 0x00ff_0000) << 16) | u64::from(v & 0xff);
                        g += u64::from(v & 0xff00);
                    }
                    red_blue[t] += rb;
                    green[t] += g;
                }
            }
            let rows = (y1 - y0) as u64;
            for (t, &(x0, x1)) in cols.iter().enumerate() {
                let n = rows * (x1 - x0) as u64;
                let avg = |sum: u64| ((sum + n / 2) / n) as u8;
                pixels.extend_from_slice(&[
                    avg(red_blue[t] >> 32),
                    avg(green[t] >> 8),
                    avg(red_blue[t] & 0xffff_ffff),
                ]);
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
    fn the_bgrx_path_averages_exactly_like_the_general_one() {
        // Pseudo-random pixels (a xorshift), odd sizes and ratios.
        let mut state = 0x2545_f491_u32;
        let bgrx: Vec<u8> = (0..97 * 61 * 4)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let raw = Pixels {
            data: &bgrx,
            width: 97,
            height: 61,
            bytes_per_pixel: 4,
            rgb: [2, 1, 0],
        };
        for (w, h) in [(97, 61), (50, 31), (13, 7), (1, 1), (96, 60)] {
            assert_eq!(
                raw.scale_down_bgrx(w, h),
                raw.scale_down_any(w, h),
                "{w}x{h}"
            );
        }
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
