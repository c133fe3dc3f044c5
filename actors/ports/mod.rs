//! Ports: narrow adapters to the outside world. Engine (bollard), system bus (zbus), store (sled).
//! Each classifies its errors so actors can tell transient faults from permanent ones.
pub mod apikeys;
pub mod cloud;
pub mod dbus;
pub mod engine;
pub mod locks;
pub mod oci;
pub mod store;
pub mod sysinfo;
pub mod unfinished;
