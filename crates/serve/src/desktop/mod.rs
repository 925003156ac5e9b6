//! Desktop sandboxes: sessions whose guest runs an X server on a virtual
//! framebuffer, for computer-use agents. [`Desktop`] drives one with the
//! computer-use action vocabulary ([`Action`]): screenshots, mouse and
//! keyboard, carried to the guest agent, which talks X11 itself.

mod action;
mod words;

pub(crate) use action::serve_desktop;
pub use action::{Action, ActionResult, Desktop, DesktopOptions};
pub use words::{action_from_words, ACTION_USAGE};
