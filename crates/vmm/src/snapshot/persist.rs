//! [`Persist`]: how a device saves its state and comes back from it.
//!
//! Every device that can be snapshotted implements it beside its own code
//! (`devices/**/persist.rs`): the state it saves, what a restore needs
//! besides that state (host resources such as a new console stream, guest
//! memory, its interrupt), and how a restore fails. Nothing outside the
//! device names its state type: the snapshot carries virtio device state
//! as the device's own encoding, tagged with its virtio device type (see
//! [`crate::devices::virtio::persist::SavedDevice`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A device (or transport) whose state can be saved and restored.
pub trait Persist: Sized {
    /// What is saved.
    type State: Serialize + DeserializeOwned;
    /// What a restore needs besides the state.
    type ConstructorArgs;
    /// Why a restore can fail.
    type Error;

    /// The state of `self`. The caller makes sure nothing changes it
    /// meanwhile (vCPUs parked, device locked).
    fn save(&self) -> Self::State;

    /// A device in `state`, connected to what `args` gives it.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}
