//! Every class of bad configuration is refused with exit code 2 and a message naming the
//! file, the line and the key. These run the real binary and need no database.

mod support;

use support::{refreshd, stderr, write_config};

const DB: &str = "[database]\nurl = \"postgresql://app:s3cr3t-pw@127.0.0.1:1/app\"\n";

/// Runs `check`, `run` and `refresh --all` on `text`; each must print `expect` (with
/// the file path and line), and exit as SPEC says: `check` and `run` 2 (a bad
/// configuration: systemd's unit does not restart on it), `refresh` 1 ("0 all
/// succeeded, 1 otherwise").
fn refused(text: &str, line: usize, expect: &[&str]) {
    let (_dir, path) = write_config(text);
    let p = path.to_str().unwrap();
    for (args, code) in [
        (vec!["check", "-c", p], 2),
        (vec!["run", "-c", p], 2),
        (vec!["refresh", "-c", p, "--all"], 1),
    ] {
        let out = refreshd(&args);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?} on:\n{text}\nstderr: {err}"
        );
        assert!(
            err.contains(&format!("{p}:{line}:")),
            "no file:line {p}:{line} in: {err}"
        );
        for e in expect {
            assert!(err.contains(e), "{e:?} missing from: {err}");
        }
        assert!(!err.contains("s3cr3t-pw"), "password leaked: {err}");
    }
}

#[test]
fn unknown_key() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\ndebunce = \"2s\"\n"),
        5,
        &["debunce"],
    );
    refused(&format!("{DB}colour = \"red\"\n"), 3, &["colour"]);
    refused(
        &format!("{DB}[htp]\nlisten = \"127.0.0.1:1\"\n"),
        3,
        &["htp"],
    );
}

#[test]
fn unknown_key_suggests_the_nearest() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\nmaxdelay = \"5s\"\n"),
        5,
        &["view[0].maxdelay", "did you mean `max_delay`?"],
    );
    refused(
        &format!("{DB}[defaults]\nstatment_timeout = \"1m\"\n"),
        4,
        &[
            "defaults.statment_timeout",
            "did you mean `statement_timeout`?",
        ],
    );
}

#[test]
fn duration_written_as_a_number() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\ndebounce = 2\n"),
        5,
        &[
            "view[0].debounce: expected a duration string like \"2s\"",
            "write debounce = \"2s\"",
        ],
    );
    refused(
        &format!("{DB}connect_timeout = 5\n"),
        3,
        &["database.connect_timeout: expected a duration string"],
    );
}

#[test]
fn contradictory_timings() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\ndebounce = \"1m\"\nmax_delay = \"10s\"\n"),
        5,
        &[
            "view[0].debounce",
            "debounce (1m) is longer than max_delay (10s)",
            "lower debounce or raise max_delay",
        ],
    );
    refused(
        &format!("{DB}[defaults]\nmin_interval = \"5m\"\n[[view]]\nname = \"public.v\"\n"),
        4,
        &[
            "defaults.min_interval",
            "min_interval (5m) is longer than max_delay (30s)",
        ],
    );
}

#[test]
fn bad_duration() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\ndebounce = \"2 parsecs\"\n"),
        5,
        &["view[0].debounce", "invalid duration"],
    );
    refused(
        &format!("shutdown_timeout = \"-1s\"\n{DB}"),
        1,
        &["shutdown_timeout"],
    );
    refused(
        &format!("{DB}[defaults]\nmax_delay = \"30\"\n[[view]]\nname = \"public.v\"\n"),
        4,
        &["defaults.max_delay"],
    );
}

#[test]
fn bad_cron() {
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\nschedule = \"0 */15 * * * * * *\"\n"),
        5,
        &["view[0].schedule", "8 fields"],
    );
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\nschedule = \"0 61 * * *\"\n"),
        5,
        &["view[0].schedule", "invalid cron"],
    );
}

#[test]
fn view_listed_twice() {
    // Folding makes these the same view; quoting keeps case.
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\n[[view]]\nname = \"PUBLIC.V\"\n"),
        6,
        &["view[1].name", "listed twice", "line 3"],
    );
}

#[test]
fn unqualified_or_malformed_name() {
    refused(
        &format!("{DB}[[view]]\nname = \"attendance_statistics_summary\"\n"),
        4,
        &["view[0].name", "schema-qualified"],
    );
    refused(
        &format!("{DB}[[view]]\nname = \"public.v; DROP TABLE x\"\n"),
        4,
        &["view[0].name"],
    );
    refused(
        &format!("{DB}[[view]]\nchannels = [\"c\"]\n"),
        3,
        &["view[0].name", "missing"],
    );
}

#[test]
fn wrong_types_and_ranges() {
    refused(
        &format!("{DB}max_concurrent_refreshes = 0\n"),
        3,
        &["max_concurrent_refreshes"],
    );
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\nconcurrently = \"yes\"\n"),
        5,
        &[],
    );
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\ndetect = \"magic\"\n"),
        5,
        &["view[0].detect"],
    );
    refused(
        &format!("{DB}[http]\nlisten = \"0.0.0.0:9648\"\n"),
        4,
        &["http.admin_token_file"],
    );
    refused(
        &format!("{DB}[[view]]\nname = \"public.v\"\nchannels = [\"refreshd_control\"]\n"),
        5,
        &["control channel"],
    );
}

#[test]
fn bad_max_load() {
    for (value, expect) in [
        ("\"0%\"", "more than 0% and at most 100%"),
        ("\"150%\"", "more than 0% and at most 100%"),
        ("\"-10%\"", "more than 0% and at most 100%"),
        ("\"0.25\"", "write a percentage such as \"25%\""),
        ("\"lots\"", "write a percentage such as \"25%\""),
        ("0.25", "expected a share of time like \"25%\""),
    ] {
        refused(
            &format!("{DB}[[view]]\nname = \"public.v\"\nmax_load = {value}\n"),
            5,
            &["view[0].max_load", expect],
        );
    }
    refused(
        &format!("{DB}[defaults]\nmax_load = \"0%\"\n[[view]]\nname = \"public.v\"\n"),
        4,
        &["defaults.max_load", "more than 0%"],
    );
}

/// The files holding secrets are read when the configuration is: missing, unreadable
/// or empty is a bad configuration in `check` as in `run` (a missing token file made
/// `check` say OK and `run` exit 1, a restart loop under systemd; a conformance review,
/// 2026-12-05). Relative paths start from the configuration's directory.
#[test]
fn secret_files_missing_or_empty() {
    refused(
        &format!(
            "{DB}[http]\nadmin_token_file = \"no-such-token\"\n[[view]]\nname = \"public.v\"\n"
        ),
        4,
        &["http.admin_token_file", "no-such-token", "cannot read"],
    );
    refused(
        "[database]\nurl = \"postgresql://app@127.0.0.1:1/app\"\npassword_file = \"/nonexistent/pw\"\n[[view]]\nname = \"public.v\"\n",
        3,
        &["database.password_file", "/nonexistent/pw"],
    );
    // An empty (blank) token file, next to the configuration.
    let text = format!("{DB}[http]\nadmin_token_file = \"token\"\n[[view]]\nname = \"public.v\"\n");
    let (dir, path) = write_config(&text);
    std::fs::write(dir.path().join("token"), " \n").unwrap();
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(":4:") && stderr(&out).contains("is empty"),
        "{}",
        stderr(&out)
    );
}

/// A `listen_url` that is no connection string is a bad configuration in `check`, as a
/// bad `url` is (exit 2, not a FAIL line and exit 1).
#[test]
fn listen_url_unparsable_is_a_config_error() {
    let (_d, path) = write_config(&format!(
        "{DB}listen_url = \"postgresql://[::1\"\n[[view]]\nname = \"public.v\"\n"
    ));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("listen_url"), "{}", stderr(&out));
}

#[test]
fn unreadable_file() {
    let out = refreshd(&["check", "-c", "/nonexistent/refreshd.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/refreshd.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn url_env_missing_is_a_config_error() {
    let (_d, path) = write_config(
        "[database]\nurl_env = \"REFRESHD_TEST_NO_SUCH_VAR\"\n[[view]]\nname = \"public.v\"\n",
    );
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("REFRESHD_TEST_NO_SUCH_VAR"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_example_config_is_valid() {
    let path = support::repo().join("config.example.toml");
    let c = refreshd::config::Config::load(&path).expect("config.example.toml parses");
    assert_eq!(c.views.len(), 4);
}
