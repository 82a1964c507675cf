//! Parse-don't-validate types: a value of these types is known to be well formed.
//! Each `parse` returns a 422 [`crate::error::ApiError`] naming what is wrong.

mod credentials;
mod device_token;
mod onboarding;

pub use credentials::{Email, Password};
pub use device_token::{DeviceSecret, DeviceToken};
pub use onboarding::{DeviceName, DeviceUid, WifiPassword, WifiSsid};
