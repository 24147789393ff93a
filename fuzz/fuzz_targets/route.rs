//! Routing of client paths and host names: no panic, and a routed path names a known operation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::planes::data::route::{RouteMethod, host_label, route, truncate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
        if let Ok(routed) = route(&method, text) {
            assert!(routed.route.path().starts_with('/'));
            assert_eq!(routed.route.method(), method);
        }
    }
    if let Some(label) = host_label(text) {
        assert!(!label.is_empty() && !label.contains('.'));
    }
    let cut = truncate(text, data.len() / 2);
    assert!(cut.len() <= data.len() / 2);
});
