//! The test configuration builder writes what refreshd reads.

mod support;

use support::config::Config;
use toml::Table;

#[test]
fn builds_what_refreshd_reads() {
    let c = Config::new("host=/tmp dbname=x")
        .top("shutdown_timeout", "2s")
        .ha("retry_interval", "1s")
        .view("public.a")
        .channels(&["c1", "c\"2"])
        .set("debounce", "0s")
        .view("public.b")
        .set("schedule", "0 0 * * *");
    let parsed: Table = toml::from_str(&c.text()).unwrap();
    assert_eq!(parsed["shutdown_timeout"].as_str(), Some("2s"));
    assert_eq!(
        parsed["database"]["url"].as_str(),
        Some("host=/tmp dbname=x")
    );
    assert_eq!(parsed["ha"]["retry_interval"].as_str(), Some("1s"));
    let views = parsed["view"].as_array().unwrap();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0]["channels"][1].as_str(), Some("c\"2"));
    assert_eq!(views[1]["schedule"].as_str(), Some("0 0 * * *"));
}
