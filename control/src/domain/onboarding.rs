//! What a user types when onboarding a camera, and what a camera says about itself.

use crate::error::ApiError;

/// A Wi-Fi network name: 1-32 bytes (IEEE 802.11 SSID limit).
#[derive(Debug, Clone)]
pub struct WifiSsid(String);

impl WifiSsid {
    pub fn parse(raw: String) -> Result<Self, ApiError> {
        if raw.is_empty() || raw.len() > 32 {
            return Err(ApiError::validation(
                "invalid_ssid",
                "wifi_ssid must be 1-32 bytes",
            ));
        }
        Ok(Self(raw))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A WPA passphrase (8-63 characters) or empty for an open network. `Debug` is redacted;
/// it is put into the QR code and never stored.
pub struct WifiPassword(String);

impl WifiPassword {
    pub fn parse(raw: String) -> Result<Self, ApiError> {
        let n = raw.chars().count();
        if n != 0 && !(8..=63).contains(&n) {
            return Err(ApiError::validation(
                "invalid_wifi_password",
                "wifi_password must be 8-63 characters, or empty for an open network",
            ));
        }
        Ok(Self(raw))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for WifiPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WifiPassword([redacted])")
    }
}

/// A user-chosen camera name: trimmed, 1-64 characters, no control characters.
#[derive(Debug, Clone)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = raw.trim();
        let n = name.chars().count();
        if n == 0 || n > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "invalid_device_name",
                "device_name must be 1-64 characters without control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A camera's hardware id (serial or MAC): 1-128 printable ASCII characters.
#[derive(Debug, Clone)]
pub struct DeviceUid(String);

impl DeviceUid {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let uid = raw.trim();
        if uid.is_empty() || uid.len() > 128 || !uid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::validation(
                "invalid_device_uid",
                "device_uid must be 1-128 printable ASCII characters",
            ));
        }
        Ok(Self(uid.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(WifiSsid::parse(String::new()).is_err());
        assert!(WifiSsid::parse("x".repeat(33)).is_err());
        assert!(WifiSsid::parse("x".repeat(32)).is_ok());
        assert!(WifiPassword::parse(String::new()).is_ok());
        assert!(WifiPassword::parse("1234567".into()).is_err());
        assert!(WifiPassword::parse("x".repeat(63)).is_ok());
        assert!(WifiPassword::parse("x".repeat(64)).is_err());
        assert!(DeviceName::parse("  ").is_err());
        assert_eq!(DeviceName::parse(" Porch ").unwrap().into_inner(), "Porch");
        assert!(DeviceUid::parse("AA:BB:CC:DD:EE:FF").is_ok());
        assert!(DeviceUid::parse("a b").is_err());
    }
}
