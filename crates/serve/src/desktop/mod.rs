//! Desktop sandboxes: sessions whose guest runs an X server on a virtual
//! framebuffer, for computer-use agents. [`start_desktop`] starts one
//! (`nook desktop start`); [`Desktop`] drives it with the computer-use
//! action vocabulary ([`Action`]): screenshots, mouse and keyboard, carried
//! to the guest agent, which talks X11 itself; [`view`] serves the display
//! over VNC (`nook desktop view`).

mod action;
mod display;
mod input;
pub mod view;
mod words;

pub(crate) use action::serve_desktop;
pub use action::{Action, ActionResult, Desktop, DesktopOptions};
pub use display::{
    desktop_state, start_desktop, start_display, DesktopState, DisplaySize, DisplaySizeError,
    DISPLAY, WINDOW_MANAGER, X_SOCKET,
};
pub use input::{ComputerUseInput, ComputerUseInputError, DESKTOP_MEMORY_MIB};
pub use words::{action_from_words, ACTION_USAGE};
