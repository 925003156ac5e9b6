//! Carrying out one desktop action on the display.

use std::time::{Duration, Instant};

use nook_proto::desktop::{DEFAULT_DISPLAY, MAX_DURATION_S, MAX_SCROLL_AMOUNT, MAX_SETTLE_MS};
use nook_proto::{
    fit_within, Coordinate, DesktopAction, DesktopReply, DesktopRequest, DesktopResult,
    ScrollDirection,
};

use super::image::Rgb;
use super::keys::{keysym_of_char, parse_chord, parse_chords};
use super::x11::{Display, Keymap, LEFT, MIDDLE, RIGHT};
use super::{DesktopFailure, Outcome};

/// How often settling looks at the screen.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// Pointer steps of a drag, so programs see motion between press and release.
const DRAG_STEPS: u32 = 8;

/// Characters typed between two syncs with the server.
const TYPE_BATCH: usize = 64;
/// How long clients get to take in a keyboard mapping change before the
/// keys that need it (xdotool waits too).
const REMAP_SETTLE: Duration = Duration::from_millis(20);

fn bad(message: String) -> DesktopFailure {
    DesktopFailure::BadRequest(message)
}

/// The display connection, kept across requests.
#[derive(Debug, Default)]
pub struct Session {
    display: Option<Display>,
}

impl Session {
    /// Performs `req`; a failed connection is dropped so the next request
    /// connects afresh.
    pub fn perform(&mut self, req: &DesktopRequest) -> Result<Outcome, DesktopFailure> {
        let name = req.display.as_deref().unwrap_or(DEFAULT_DISPLAY);
        if self.display.as_ref().is_some_and(|d| d.name != name) {
            self.display = None;
        }
        let display = match self.display.take() {
            Some(d) => d,
            None => Display::connect(name)?,
        };
        let mut run = Run { d: display, req };
        let result = run.perform();
        if !matches!(result, Err(DesktopFailure::X(_))) {
            self.display = Some(run.d);
        }
        result
    }
}

/// One request on a connected display.
struct Run<'a> {
    d: Display,
    req: &'a DesktopRequest,
}

impl Run<'_> {
    fn perform(&mut self) -> Result<Outcome, DesktopFailure> {
        let screen = self.d.screen_size()?;
        let result = self.act(screen)?;
        let settled = match self.req.settle_ms {
            Some(ms) => Some(self.settle(screen, ms.min(MAX_SETTLE_MS))?),
            None => None,
        };
        let (result, png) = match result {
            Act::Image(region) => {
                let full = [0, 0, screen[0], screen[1]];
                let own = [region[2] - region[0], region[3] - region[1]];
                let size = self
                    .req
                    .max_image_size
                    .map_or(own, |max| fit_within(own, max));
                let img = match settled {
                    Some(raw) if region == full => self.d.to_rgb(full, &raw, size)?,
                    _ => self.d.capture(region, size)?,
                };
                encode(img)?
            }
            Act::Position(p) => (DesktopResult::Position { x: p[0], y: p[1] }, Vec::new()),
            Act::Done => (DesktopResult::Done, Vec::new()),
        };
        Ok(Outcome {
            reply: DesktopReply { screen, result },
            png,
        })
    }

    /// Waits until two looks at the screen `SETTLE_POLL` apart match, at
    /// most `ms`; the last look's raw pixels.
    fn settle(&mut self, screen: [u32; 2], ms: u64) -> Result<Vec<u8>, DesktopFailure> {
        let full = [0, 0, screen[0], screen[1]];
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut last = self.d.capture_raw(full)?;
        while Instant::now() < deadline {
            std::thread::sleep(SETTLE_POLL.min(deadline.saturating_duration_since(Instant::now())));
            let same = self.d.with_raw(full, |now| {
                if now == &last[..] {
                    return true;
                }
                last.clear();
                last.extend_from_slice(now);
                false
            })?;
            if same {
                break;
            }
        }
        Ok(last)
    }

    fn act(&mut self, screen: [u32; 2]) -> Result<Act, DesktopFailure> {
        let on = |c: Coordinate| inside(c, screen);
        use DesktopAction::*;
        match &self.req.action {
            Screenshot => return Ok(Act::Image([0, 0, screen[0], screen[1]])),
            Zoom { region } => return Ok(Act::Image(check_region(*region, screen)?)),
            CursorPosition => return Ok(Act::Position(self.d.pointer()?)),
            Key { text } => {
                let chords = parse_chords(text).map_err(bad)?;
                let mut map = self.d.keymap()?;
                for chord in chords {
                    let codes = self.press_keys(&mut map, &chord)?;
                    self.release_keys(&codes)?;
                }
            }
            Type { text } => self.type_text(text)?,
            MouseMove { coordinate } => self.d.motion(on(*coordinate)?)?,
            LeftClick { coordinate, text } => self.click(*coordinate, text, LEFT, 1, screen)?,
            RightClick { coordinate, text } => self.click(*coordinate, text, RIGHT, 1, screen)?,
            MiddleClick { coordinate, text } => self.click(*coordinate, text, MIDDLE, 1, screen)?,
            DoubleClick { coordinate, text } => self.click(*coordinate, text, LEFT, 2, screen)?,
            TripleClick { coordinate, text } => self.click(*coordinate, text, LEFT, 3, screen)?,
            LeftClickDrag {
                start_coordinate,
                coordinate,
            } => self.drag(on(*start_coordinate)?, on(*coordinate)?)?,
            LeftMouseDown { coordinate } | LeftMouseUp { coordinate } => {
                if let Some(c) = coordinate {
                    self.d.motion(on(*c)?)?;
                }
                let down = matches!(self.req.action, LeftMouseDown { .. });
                self.d.button(LEFT, down)?;
            }
            Scroll {
                coordinate,
                scroll_direction,
                scroll_amount,
                text,
            } => self.scroll(*coordinate, *scroll_direction, *scroll_amount, text, screen)?,
            HoldKey { text, duration } => {
                let chord = parse_chord(text.trim()).map_err(bad)?;
                let wait = duration_of(*duration)?;
                let mut map = self.d.keymap()?;
                let codes = self.press_keys(&mut map, &chord)?;
                self.d.sync()?;
                std::thread::sleep(wait);
                self.release_keys(&codes)?;
            }
            Wait { duration } => std::thread::sleep(duration_of(*duration)?),
        }
        self.d.sync()?;
        Ok(Act::Done)
    }

    /// Presses the keys of a chord in order (adding shift for a key on the
    /// second level); the keycodes pressed, to release in reverse.
    fn press_keys(&mut self, map: &mut Keymap, chord: &[u32]) -> Result<Vec<u8>, DesktopFailure> {
        let mut codes = Vec::with_capacity(chord.len() + 1);
        for &sym in chord {
            let (code, shift) = self.d.keycode_for(map, sym)?;
            if shift {
                let s = self.d.shift_code(map)?;
                if !codes.contains(&s) {
                    self.d.key(s, true)?;
                    codes.push(s);
                }
            }
            self.d.key(code, true)?;
            codes.push(code);
        }
        Ok(codes)
    }

    fn release_keys(&self, codes: &[u8]) -> Result<(), DesktopFailure> {
        for &c in codes.iter().rev() {
            self.d.key(c, false)?;
        }
        Ok(())
    }

    /// Types `text` in stretches: the characters a stretch needs that the
    /// keyboard lacks get their keycodes first, all at once, then the
    /// server is synced and clients get [`REMAP_SETTLE`] to take in the
    /// new mapping before its first key arrives. A client that looked a
    /// key up against a mapping older than the key (Tk under load once
    /// read `ö` as NoSymbol, remapped just before its key) would see the
    /// wrong character.
    fn type_text(&mut self, text: &str) -> Result<(), DesktopFailure> {
        let mut map = self.d.keymap()?;
        let syms: Vec<u32> = text.chars().map(keysym_of_char).collect();
        let mut typed = 0;
        while typed < syms.len() {
            let stretch = self.map_ahead(&mut map, &syms[typed..])?;
            for (i, &sym) in stretch.iter().enumerate() {
                let codes = self.press_keys(&mut map, &[sym])?;
                self.release_keys(&codes)?;
                if i % TYPE_BATCH == TYPE_BATCH - 1 {
                    self.d.sync()?;
                }
            }
            typed += stretch.len();
        }
        Ok(())
    }

    /// The longest start of `syms` whose missing keysyms fit the keycodes
    /// that can be remapped, with those keysyms mapped (never empty).
    fn map_ahead<'s>(
        &mut self,
        map: &mut Keymap,
        syms: &'s [u32],
    ) -> Result<&'s [u32], DesktopFailure> {
        let room = self.d.remappable(map);
        let mut missing: Vec<u32> = Vec::new();
        let mut end = 0;
        for &sym in syms {
            if map.find(sym).is_none() && !missing.contains(&sym) {
                if missing.len() == room && end > 0 {
                    break;
                }
                missing.push(sym);
            }
            end += 1;
        }
        for &sym in &missing {
            self.d.keycode_for(map, sym)?;
        }
        if !missing.is_empty() {
            self.d.sync()?;
            std::thread::sleep(REMAP_SETTLE);
        }
        Ok(&syms[..end])
    }

    /// The keys of a click's or scroll's `text` held down, released by
    /// [`Run::release_keys`].
    fn hold(&mut self, text: &Option<String>) -> Result<Vec<u8>, DesktopFailure> {
        match text.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => {
                let chord = parse_chord(t).map_err(bad)?;
                let mut map = self.d.keymap()?;
                self.press_keys(&mut map, &chord)
            }
            _ => Ok(Vec::new()),
        }
    }

    fn click(
        &mut self,
        at: Option<Coordinate>,
        text: &Option<String>,
        button: u8,
        times: u32,
        screen: [u32; 2],
    ) -> Result<(), DesktopFailure> {
        if let Some(c) = at {
            self.d.motion(inside(c, screen)?)?;
        }
        let held = self.hold(text)?;
        for _ in 0..times {
            self.d.button(button, true)?;
            self.d.button(button, false)?;
        }
        self.release_keys(&held)
    }

    fn drag(&mut self, from: Coordinate, to: Coordinate) -> Result<(), DesktopFailure> {
        self.d.motion(from)?;
        self.d.button(LEFT, true)?;
        self.d.sync()?;
        for i in 1..=DRAG_STEPS {
            let step = |a: u32, b: u32| {
                (i64::from(a)
                    + (i64::from(b) - i64::from(a)) * i64::from(i) / i64::from(DRAG_STEPS))
                    as u32
            };
            self.d
                .motion([step(from[0], to[0]), step(from[1], to[1])])?;
            self.d.sync()?;
        }
        self.d.button(LEFT, false)
    }

    fn scroll(
        &mut self,
        at: Option<Coordinate>,
        direction: ScrollDirection,
        amount: u32,
        text: &Option<String>,
        screen: [u32; 2],
    ) -> Result<(), DesktopFailure> {
        if amount > MAX_SCROLL_AMOUNT {
            return Err(bad(format!(
                "scroll_amount {amount} is more than {MAX_SCROLL_AMOUNT}"
            )));
        }
        if let Some(c) = at {
            self.d.motion(inside(c, screen)?)?;
        }
        let button = match direction {
            ScrollDirection::Up => 4,
            ScrollDirection::Down => 5,
            ScrollDirection::Left => 6,
            ScrollDirection::Right => 7,
        };
        let held = self.hold(text)?;
        for _ in 0..amount {
            self.d.button(button, true)?;
            self.d.button(button, false)?;
        }
        self.release_keys(&held)
    }
}

/// The PNG of `img` and its result.
fn encode(img: Rgb) -> Result<(DesktopResult, Vec<u8>), DesktopFailure> {
    let png = img
        .to_png()
        .map_err(|e| DesktopFailure::X(format!("cannot encode the PNG: {e}")))?;
    let result = DesktopResult::Image {
        width: img.width,
        height: img.height,
        bytes: png.len() as u64,
    };
    Ok((result, png))
}

/// What an action leaves to answer with.
enum Act {
    /// A PNG of this screen region.
    Image([u32; 4]),
    Position(Coordinate),
    Done,
}

fn inside(c: Coordinate, screen: [u32; 2]) -> Result<Coordinate, DesktopFailure> {
    if c[0] < screen[0] && c[1] < screen[1] {
        Ok(c)
    } else {
        Err(bad(format!(
            "coordinate [{}, {}] is off the {}x{} screen",
            c[0], c[1], screen[0], screen[1]
        )))
    }
}

fn check_region(r: [u32; 4], screen: [u32; 2]) -> Result<[u32; 4], DesktopFailure> {
    if r[0] < r[2] && r[1] < r[3] && r[2] <= screen[0] && r[3] <= screen[1] {
        Ok(r)
    } else {
        Err(bad(format!(
            "region {r:?} is not [x0, y0, x1, y1] with x0 < x1 <= {} and y0 < y1 <= {}",
            screen[0], screen[1]
        )))
    }
}

fn duration_of(seconds: f64) -> Result<Duration, DesktopFailure> {
    if seconds.is_finite() && (0.0..=MAX_DURATION_S).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(bad(format!(
            "duration {seconds} is not between 0 and {MAX_DURATION_S} seconds"
        )))
    }
}
