//! The configuration parser and validator: any text gives a Config or an error naming a place.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = Config::parse(text, "fuzz.toml", &|_| Some("value".to_owned())) {
        assert_eq!(error.file, "fuzz.toml");
        let _ = error.to_string();
    }
});
