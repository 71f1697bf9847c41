//! A configuration builder for tests: TOML written by the `toml` serializer, not by
//! hand (`Config::new(url).view("public.v").channels(&["c"]).set("debounce", "0s")`).

use toml::{Table, Value};

/// A refreshd configuration under construction.
#[derive(Clone, Debug)]
pub struct Config {
    root: Table,
}

impl Config {
    /// `[database] url = url`, nothing else.
    pub fn new(url: &str) -> Self {
        let mut c = Config { root: Table::new() };
        c.table("database").insert("url".into(), url.into());
        c
    }

    fn table(&mut self, name: &str) -> &mut Table {
        self.root
            .entry(name)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("a table")
    }

    /// A top-level key (`shutdown_timeout`, `capture_check_interval`, ...).
    pub fn top(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.root.insert(key.into(), value.into());
        self
    }

    /// A key in `[section]` (`database`, `ha`, `defaults`, `http`, ...).
    pub fn section(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        self.table(section).insert(key.into(), value.into());
        self
    }

    pub fn database(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("database", key, value)
    }

    pub fn ha(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("ha", key, value)
    }

    pub fn defaults(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("defaults", key, value)
    }

    /// A new `[[view]]` named `name`; [`Config::set`] and [`Config::channels`] then
    /// apply to it.
    pub fn view(mut self, name: &str) -> Self {
        let mut v = Table::new();
        v.insert("name".into(), name.into());
        self.root
            .entry("view")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("an array of views")
            .push(Value::Table(v));
        self
    }

    fn last_view(&mut self) -> &mut Table {
        self.root
            .get_mut("view")
            .and_then(Value::as_array_mut)
            .and_then(|a| a.last_mut())
            .and_then(Value::as_table_mut)
            .expect("view() first")
    }

    /// A key of the last view.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.last_view().insert(key.into(), value.into());
        self
    }

    /// The last view's channels.
    pub fn channels(self, channels: &[&str]) -> Self {
        let list: Vec<Value> = channels.iter().map(|c| Value::from(*c)).collect();
        self.set("channels", list)
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        toml::to_string(&self.root).expect("serializable")
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}
