//! The X11 side of desktop actions: one connection to the display (pure
//! Rust, `x11rb`), XTEST for input, `GetImage` for frames, the core
//! keyboard mapping for keysym -> keycode (spare keycodes remapped for
//! characters the keyboard map lacks, as xdotool does).

use std::collections::VecDeque;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, ImageOrder, Window};
use x11rb::protocol::xtest::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::image::{Pixels, Rgb};
use super::keys::SHIFT_L;
use super::shm::ShmSegment;
use super::DesktopFailure;

/// XTEST event types (the core event codes).
const KEY_PRESS: u8 = 2;
const KEY_RELEASE: u8 = 3;
const BUTTON_PRESS: u8 = 4;
const BUTTON_RELEASE: u8 = 5;
const MOTION_NOTIFY: u8 = 6;

/// Pointer buttons.
pub const LEFT: u8 = 1;
pub const MIDDLE: u8 = 2;
pub const RIGHT: u8 = 3;

fn x_failure(what: &str, e: impl std::fmt::Display) -> DesktopFailure {
    DesktopFailure::X(format!("{what}: {e}"))
}

/// How the server lays out a 32-bit pixel of a Z-format image of the
/// root's depth.
#[derive(Debug, Clone, Copy)]
struct PixelFormat {
    lsb_first: bool,
    /// Right shifts of the red, green and blue 8-bit channels.
    shifts: [u32; 3],
}

impl PixelFormat {
    /// Raw pixels of `region` as RGB of `size` (the region's own size, or
    /// smaller: scaled by area averaging, straight from the raw pixels in
    /// the usual layout).
    fn to_rgb_sized(
        self,
        region: [u32; 4],
        raw: &[u8],
        size: [u32; 2],
    ) -> Result<Rgb, DesktopFailure> {
        let (width, height) = (region[2] - region[0], region[3] - region[1]);
        if size == [width, height] {
            return self.to_rgb(region, raw);
        }
        let usual = self.lsb_first && self.shifts == [16, 8, 0];
        if !usual || raw.len() < width as usize * height as usize * 4 {
            return Ok(self.to_rgb(region, raw)?.scale_down(size[0], size[1]));
        }
        let pixels = Pixels {
            data: raw,
            width,
            height,
            bytes_per_pixel: 4,
            rgb: [2, 1, 0],
        };
        Ok(pixels.scale_down(size[0], size[1]))
    }

    /// Converts raw pixels of `region` to RGB.
    fn to_rgb(self, region: [u32; 4], raw: &[u8]) -> Result<Rgb, DesktopFailure> {
        let (width, height) = (region[2] - region[0], region[3] - region[1]);
        let f = self;
        let n = width as usize * height as usize;
        // Z-format rows of 32-bit pixels carry no padding.
        if raw.len() < n * 4 {
            return Err(DesktopFailure::X(format!(
                "the X server sent {} bytes for a {width}x{height} image",
                raw.len()
            )));
        }
        let mut pixels = vec![0u8; n * 3];
        let src = raw[..n * 4].chunks_exact(4);
        if f.lsb_first && f.shifts == [16, 8, 0] {
            // The usual layout (B, G, R, X in memory): a byte shuffle.
            for (px, out) in src.zip(pixels.chunks_exact_mut(3)) {
                out.copy_from_slice(&[px[2], px[1], px[0]]);
            }
        } else {
            for (px, out) in src.zip(pixels.chunks_exact_mut(3)) {
                let b = [px[0], px[1], px[2], px[3]];
                let v = if f.lsb_first {
                    u32::from_le_bytes(b)
                } else {
                    u32::from_be_bytes(b)
                };
                out.copy_from_slice(&f.shifts.map(|s| (v >> s) as u8));
            }
        }
        Ok(Rgb {
            width,
            height,
            pixels,
        })
    }
}

/// The core keyboard mapping: `per` keysyms for each keycode from `min`.
#[derive(Debug, Clone)]
pub struct Keymap {
    min: u8,
    per: usize,
    syms: Vec<u32>,
}

impl Keymap {
    fn row(&self, code: u8) -> &[u32] {
        let i = usize::from(code - self.min) * self.per;
        &self.syms[i..i + self.per]
    }

    fn codes(&self) -> impl Iterator<Item = u8> + '_ {
        let n = self.syms.len() / self.per.max(1);
        (0..n).map(move |i| self.min + i as u8)
    }

    /// The keycode giving `sym` and whether it needs shift (level 2).
    pub fn find(&self, sym: u32) -> Option<(u8, bool)> {
        for level in 0..self.per.min(2) {
            if let Some(code) = self.codes().find(|&c| self.row(c)[level] == sym) {
                return Some((code, level == 1));
            }
        }
        None
    }

    /// Keycodes with no keysym at all: free to remap.
    fn spare(&self) -> impl Iterator<Item = u8> + '_ {
        self.codes()
            .filter(|&c| self.row(c).iter().all(|&s| s == 0))
    }
}

/// A connection to one X display.
#[derive(Debug)]
pub struct Display {
    pub name: String,
    conn: RustConnection,
    root: Window,
    format: PixelFormat,
    min_keycode: u8,
    max_keycode: u8,
    /// Keycodes this agent gave a keysym, oldest first: reused when no
    /// spare one is left.
    remapped: VecDeque<u8>,
    /// The MIT-SHM segment frames come through, once made; `Some(None)`
    /// when the server cannot share memory (frames come through the socket).
    shm: Option<Option<ShmSegment>>,
}

impl Display {
    /// Connects to display `name` (`:0`): local connections need no cookie
    /// on nook's desktop; XTEST must be there.
    pub fn connect(name: &str) -> Result<Display, DesktopFailure> {
        let (conn, screen_num) = RustConnection::connect(Some(name)).map_err(|e| {
            DesktopFailure::NoDisplay(format!(
                "cannot connect to X display {name} ({e}): is the desktop running?"
            ))
        })?;
        let present = conn
            .extension_information(xtest::X11_EXTENSION_NAME)
            .map_err(|e| x_failure("query XTEST", e))?;
        if present.is_none() {
            return Err(DesktopFailure::X(format!(
                "X display {name} has no XTEST extension"
            )));
        }
        let setup = conn.setup();
        let screen = setup
            .roots
            .get(screen_num)
            .ok_or_else(|| DesktopFailure::X(format!("X display {name} has no screen")))?;
        let format = pixel_format(setup, screen)?;
        Ok(Display {
            name: name.to_string(),
            root: screen.root,
            format,
            min_keycode: setup.min_keycode,
            max_keycode: setup.max_keycode,
            remapped: VecDeque::new(),
            shm: None,
            conn,
        })
    }

    /// The screen's size in pixels.
    pub fn screen_size(&self) -> Result<[u32; 2], DesktopFailure> {
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(|e| x_failure("get geometry", e))?
            .reply()
            .map_err(|e| x_failure("get geometry", e))?;
        Ok([u32::from(g.width), u32::from(g.height)])
    }

    /// Calls `f` with the raw pixels of a screen region (`[x0, y0, x1,
    /// y1]`, inside the screen), through shared memory when the server
    /// offers it.
    pub fn with_raw<T>(
        &mut self,
        region: [u32; 4],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, DesktopFailure> {
        let [x0, y0, x1, y1] = region;
        let need = (x1 - x0) as usize * (y1 - y0) as usize * 4;
        let stale = matches!(&self.shm, Some(Some(s)) if s.len() < need);
        if self.shm.is_none() || stale {
            // Room for the whole screen, so every later region fits.
            let [w, h] = self.screen_size()?;
            let len = (w as usize * h as usize * 4).max(need);
            self.shm = Some(ShmSegment::new(&self.conn, len));
        }
        if let Some(Some(seg)) = &mut self.shm {
            if let Some(raw) = seg.get_image(&self.conn, self.root, region) {
                return Ok(f(raw));
            }
        }
        let reply = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                x0 as i16,
                y0 as i16,
                (x1 - x0) as u16,
                (y1 - y0) as u16,
                !0,
            )
            .map_err(|e| x_failure("get image", e))?
            .reply()
            .map_err(|e| x_failure("get image", e))?;
        Ok(f(&reply.data))
    }

    /// Whether frames come through shared memory.
    #[cfg(test)]
    pub fn shares_memory(&self) -> bool {
        matches!(self.shm, Some(Some(_)))
    }

    /// The raw pixels of a screen region, as the server lays them out.
    pub fn capture_raw(&mut self, region: [u32; 4]) -> Result<Vec<u8>, DesktopFailure> {
        self.with_raw(region, <[u8]>::to_vec)
    }

    /// A screen region (`[x0, y0, x1, y1]`, inside the screen) as RGB of
    /// `size` (the region's size or smaller).
    pub fn capture(&mut self, region: [u32; 4], size: [u32; 2]) -> Result<Rgb, DesktopFailure> {
        let format = self.format;
        self.with_raw(region, |raw| format.to_rgb_sized(region, raw, size))?
    }

    /// Raw pixels of `region` as RGB of `size` (the region's or smaller).
    pub fn to_rgb(
        &self,
        region: [u32; 4],
        raw: &[u8],
        size: [u32; 2],
    ) -> Result<Rgb, DesktopFailure> {
        self.format.to_rgb_sized(region, raw, size)
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), DesktopFailure> {
        self.conn
            .xtest_fake_input(kind, detail, 0, self.root, x, y, 0)
            .map_err(|e| x_failure("send input", e))?;
        Ok(())
    }

    /// Moves the pointer to `[x, y]`.
    pub fn motion(&self, [x, y]: [u32; 2]) -> Result<(), DesktopFailure> {
        self.fake(MOTION_NOTIFY, 0, x as i16, y as i16)
    }

    pub fn button(&self, button: u8, press: bool) -> Result<(), DesktopFailure> {
        let kind = if press { BUTTON_PRESS } else { BUTTON_RELEASE };
        self.fake(kind, button, 0, 0)
    }

    pub fn key(&self, keycode: u8, press: bool) -> Result<(), DesktopFailure> {
        let kind = if press { KEY_PRESS } else { KEY_RELEASE };
        self.fake(kind, keycode, 0, 0)
    }

    /// Where the pointer is.
    pub fn pointer(&self) -> Result<[u32; 2], DesktopFailure> {
        let p = self
            .conn
            .query_pointer(self.root)
            .map_err(|e| x_failure("query pointer", e))?
            .reply()
            .map_err(|e| x_failure("query pointer", e))?;
        Ok([p.root_x.max(0) as u32, p.root_y.max(0) as u32])
    }

    /// Waits until the server has processed every request sent so far;
    /// fails with the first X error they caused.
    pub fn sync(&self) -> Result<(), DesktopFailure> {
        self.conn.sync().map_err(|e| x_failure("sync", e))?;
        while let Some(event) = self
            .conn
            .poll_for_event()
            .map_err(|e| x_failure("read events", e))?
        {
            if let Event::Error(e) = event {
                return Err(DesktopFailure::X(format!("X error {:?}", e.error_kind)));
            }
        }
        Ok(())
    }

    /// The keyboard mapping as the server has it now.
    pub fn keymap(&self) -> Result<Keymap, DesktopFailure> {
        let count = self.max_keycode - self.min_keycode + 1;
        let m = self
            .conn
            .get_keyboard_mapping(self.min_keycode, count)
            .map_err(|e| x_failure("get keyboard mapping", e))?
            .reply()
            .map_err(|e| x_failure("get keyboard mapping", e))?;
        Ok(Keymap {
            min: self.min_keycode,
            per: usize::from(m.keysyms_per_keycode).max(1),
            syms: m.keysyms,
        })
    }

    /// The keycode that gives `sym`, and whether shift must be held; a
    /// keysym the keyboard lacks is given to a spare keycode (or the one
    /// this agent remapped longest ago).
    pub fn keycode_for(
        &mut self,
        map: &mut Keymap,
        sym: u32,
    ) -> Result<(u8, bool), DesktopFailure> {
        if let Some(found) = map.find(sym) {
            return Ok(found);
        }
        let code = match map.spare().next() {
            Some(c) => c,
            None => self.remapped.pop_front().ok_or_else(|| {
                DesktopFailure::X("no spare keycode to type a character with".into())
            })?,
        };
        let mut row = vec![0u32; map.per];
        row[0] = sym;
        if map.per > 1 {
            row[1] = sym;
        }
        self.conn
            .change_keyboard_mapping(1, code, map.per as u8, &row)
            .map_err(|e| x_failure("change keyboard mapping", e))?;
        let i = usize::from(code - map.min) * map.per;
        map.syms[i..i + map.per].copy_from_slice(&row);
        self.remapped.push_back(code);
        Ok((code, false))
    }

    /// How many keycodes [`Display::keycode_for`] can give new keysyms
    /// without taking one given earlier in the same stretch: the spare
    /// ones and those it remapped before.
    pub fn remappable(&self, map: &Keymap) -> usize {
        map.spare().count() + self.remapped.len()
    }

    /// The keycode of `Shift_L`.
    pub fn shift_code(&mut self, map: &mut Keymap) -> Result<u8, DesktopFailure> {
        self.keycode_for(map, SHIFT_L).map(|(c, _)| c)
    }
}

fn pixel_format(
    setup: &x11rb::protocol::xproto::Setup,
    screen: &x11rb::protocol::xproto::Screen,
) -> Result<PixelFormat, DesktopFailure> {
    let depth = screen.root_depth;
    let bpp = setup
        .pixmap_formats
        .iter()
        .find(|f| f.depth == depth)
        .map(|f| f.bits_per_pixel)
        .unwrap_or(0);
    let visual = screen
        .allowed_depths
        .iter()
        .flat_map(|d| d.visuals.iter())
        .find(|v| v.visual_id == screen.root_visual);
    let (Some(v), 32) = (visual, bpp) else {
        return Err(DesktopFailure::X(format!(
            "unsupported screen format: depth {depth}, {bpp} bits per pixel (start the X server with a 24-bit screen)"
        )));
    };
    // The shift that brings a channel's top 8 bits down to bits 0..8.
    let shift = |mask: u32| (32 - mask.leading_zeros()).saturating_sub(8);
    Ok(PixelFormat {
        lsb_first: setup.image_byte_order == ImageOrder::LSB_FIRST,
        shifts: [shift(v.red_mask), shift(v.green_mask), shift(v.blue_mask)],
    })
}
