//! What a reload changes, computed without I/O: [`ReloadPlan::diff`] compares the
//! running configuration with the new one; the core installs the plan (`Core::apply`, in
//! `install.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::config::{Config, ViewConfig};
use crate::engine::reason::Reason;
use crate::pg::ident::QualifiedName;

/// Why a reload is refused (the old configuration stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the HTTP server listens on {0} (not loopback) until a restart: http.admin_token_file cannot be removed by a reload")]
    TokenRemoved(std::net::SocketAddr),
}

/// What installing a new configuration changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// For each new view, its index in the old configuration (`None`: added). Its
    /// coalescer state, history and dirty groups move with it.
    pub previous: Vec<Option<usize>>,
    /// Views added (their metrics are registered).
    pub added: Vec<QualifiedName>,
    /// Views removed (their metrics are forgotten).
    pub removed: Vec<QualifiedName>,
    /// New indexes of keyed views whose dirty groups start over (everything dirty): new
    /// keyed views, and those whose query or key changed.
    pub fresh_keys: BTreeSet<usize>,
    /// Views that catch up once all their channels are LISTENed, and why: added views
    /// (startup), views whose channels or keyed definition changed (resync). A change
    /// committed before the LISTEN would reach nobody.
    pub catch_up: Vec<(QualifiedName, Reason)>,
    /// Channels to LISTEN on, and to UNLISTEN.
    pub listen: BTreeSet<String>,
    pub unlisten: BTreeSet<String>,
    /// Views whose schedule changed (schedules are rebuilt on every reload).
    pub rescheduled: Vec<QualifiedName>,
    /// Sections that changed but take effect only at the next restart.
    pub restart_needed: Vec<&'static str>,
}

impl ReloadPlan {
    /// The plan for the first configuration: every view is new, registered at start
    /// and caught up when leadership comes (nothing to announce or wait for).
    pub fn initial(config: &Config) -> Self {
        ReloadPlan {
            previous: vec![None; config.views.len()],
            fresh_keys: keyed_indexes(&config.views),
            listen: config.channels().into_iter().collect(),
            ..ReloadPlan::default()
        }
    }

    /// What changes from `old` to `new`.
    pub fn diff(old: &Config, new: &Config) -> Self {
        let was: HashMap<&QualifiedName, usize> = old
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| (&v.name, i))
            .collect();
        let will: HashSet<&QualifiedName> = new.views.iter().map(|v| &v.name).collect();
        let previous: Vec<Option<usize>> = new
            .views
            .iter()
            .map(|v| was.get(&v.name).copied())
            .collect();
        let mut plan = ReloadPlan {
            removed: old
                .views
                .iter()
                .filter(|o| !will.contains(&o.name))
                .map(|o| o.name.clone())
                .collect(),
            restart_needed: restart_needed(old, new),
            ..ReloadPlan::default()
        };
        for (i, (v, prev)) in new.views.iter().zip(&previous).enumerate() {
            let Some(j) = *prev else {
                plan.added.push(v.name.clone());
                plan.catch_up.push((v.name.clone(), Reason::Startup));
                if v.keyed.is_some() {
                    plan.fresh_keys.insert(i);
                }
                continue;
            };
            let o = &old.views[j];
            let redefined = v.keyed.is_some() && !same_keyed(o, v);
            if redefined {
                plan.fresh_keys.insert(i);
            }
            if o.channels != v.channels || redefined {
                plan.catch_up.push((v.name.clone(), Reason::Resync));
            }
            if o.schedule.as_ref().map(|s| &s.expr) != v.schedule.as_ref().map(|s| &s.expr) {
                plan.rescheduled.push(v.name.clone());
            }
        }
        let (was, will): (BTreeSet<String>, BTreeSet<String>) = (
            old.channels().into_iter().collect(),
            new.channels().into_iter().collect(),
        );
        plan.listen = will.difference(&was).cloned().collect();
        plan.unlisten = was.difference(&will).cloned().collect();
        plan.previous = previous;
        plan
    }
}

/// Whether a reload may install `new` while the HTTP server stays bound to `bound`: a
/// server on a non-loopback address keeps requiring its admin token.
pub fn refuse(bound: std::net::SocketAddr, new_token: Option<&str>) -> Result<(), Refused> {
    if new_token.is_none() && !bound.ip().is_loopback() {
        return Err(Refused::TokenRemoved(bound));
    }
    Ok(())
}

/// Both keyed with the same query and key (the dirty groups keep their meaning).
fn same_keyed(old: &ViewConfig, new: &ViewConfig) -> bool {
    match (&old.keyed, &new.keyed) {
        (Some(o), Some(n)) => o.query == n.query && o.key == n.key,
        _ => false,
    }
}

fn keyed_indexes(views: &[ViewConfig]) -> BTreeSet<usize> {
    (0..views.len())
        .filter(|&i| views[i].keyed.is_some())
        .collect()
}

fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if new.database != old.database {
        out.push("[database]");
    }
    if new.http != old.http {
        out.push("[http]");
    }
    if new.ha != old.ha {
        out.push("[ha]");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[database]\nurl = \"postgresql://u@h/db\"\n";

    fn config(views: &str) -> Config {
        config_with(BASE, views)
    }

    fn config_with(base: &str, views: &str) -> Config {
        Config::parse(Path::new("/etc/refreshd/t.toml"), &format!("{base}{views}")).unwrap()
    }

    fn view(name: &str, channels: &str) -> String {
        format!("[[view]]\nname = \"public.{name}\"\nchannels = [{channels}]\n")
    }

    fn keyed(name: &str, query: &str, key: &str) -> String {
        format!(
            "[[view]]\nname = \"public.{name}\"\nkind = \"keyed\"\nquery = \"public.{query}\"\nkey = [{key}]\nchannels = [\"k\"]\n"
        )
    }

    fn n(name: &str) -> QualifiedName {
        QualifiedName::parse(&format!("public.{name}")).unwrap()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let c = config(&format!(
            "{}{}",
            view("a", "\"x\""),
            keyed("k", "kd", "\"id\"")
        ));
        let plan = ReloadPlan::diff(&c, &c);
        assert_eq!(
            plan,
            ReloadPlan {
                previous: vec![Some(0), Some(1)],
                ..ReloadPlan::default()
            }
        );
    }

    #[test]
    fn added_removed_and_moved_views() {
        let old = config(&format!("{}{}", view("a", "\"x\""), view("b", "\"y\"")));
        let new = config(&format!("{}{}", view("c", "\"z\""), view("a", "\"x\"")));
        let plan = ReloadPlan::diff(&old, &new);
        assert_eq!(plan.previous, vec![None, Some(0)], "a moved to index 1");
        assert_eq!(plan.added, vec![n("c")]);
        assert_eq!(plan.removed, vec![n("b")]);
        assert_eq!(plan.catch_up, vec![(n("c"), Reason::Startup)]);
        assert_eq!(plan.listen, set(&["z"]));
        assert_eq!(plan.unlisten, set(&["y"]));
        assert!(plan.restart_needed.is_empty());
    }

    #[test]
    fn new_channels_resync_once_listened_and_shared_channels_stay() {
        let old = config(&format!("{}{}", view("a", "\"x\""), view("b", "\"x\"")));
        let new = config(&format!(
            "{}{}",
            view("a", "\"x\", \"w\""),
            view("b", "\"x\"")
        ));
        let plan = ReloadPlan::diff(&old, &new);
        assert_eq!(plan.catch_up, vec![(n("a"), Reason::Resync)]);
        assert_eq!(plan.listen, set(&["w"]));
        assert!(plan.unlisten.is_empty());
        assert!(plan.added.is_empty() && plan.removed.is_empty());
    }

    #[test]
    fn a_keyed_view_keeps_its_groups_unless_its_definition_changes() {
        let old = config(&format!(
            "{}{}{}",
            keyed("same", "d1", "\"id\""),
            keyed("query", "d2", "\"id\""),
            keyed("key", "d3", "\"id\"")
        ));
        let new = config(&format!(
            "{}{}{}{}",
            keyed("same", "d1", "\"id\""),
            keyed("query", "other", "\"id\""),
            keyed("key", "d3", "\"id\", \"day\""),
            keyed("added", "d4", "\"id\"")
        ));
        let plan = ReloadPlan::diff(&old, &new);
        assert_eq!(plan.fresh_keys, BTreeSet::from([1, 2, 3]));
        assert_eq!(
            plan.catch_up,
            vec![
                (n("query"), Reason::Resync),
                (n("key"), Reason::Resync),
                (n("added"), Reason::Startup)
            ]
        );
    }

    #[test]
    fn a_materialized_view_turned_keyed_starts_over() {
        let old = config(&view("k", "\"k\""));
        let new = config(&keyed("k", "d", "\"id\""));
        let plan = ReloadPlan::diff(&old, &new);
        assert_eq!(plan.fresh_keys, BTreeSet::from([0]));
        assert_eq!(plan.catch_up, vec![(n("k"), Reason::Resync)]);
    }

    #[test]
    fn schedules_and_sections_that_need_a_restart() {
        let old = config(&view("a", "\"x\""));
        let new = config_with(
            "[database]\nurl = \"postgresql://u@other/db\"\n[ha]\nlock_name = \"other\"\n",
            &format!("{}schedule = \"*/5 * * * *\"\n", view("a", "\"x\"")),
        );
        let plan = ReloadPlan::diff(&old, &new);
        assert_eq!(plan.rescheduled, vec![n("a")]);
        assert_eq!(plan.restart_needed, vec!["[database]", "[ha]"]);
        assert!(plan.catch_up.is_empty());
    }

    #[test]
    fn the_first_plan_announces_nothing() {
        let c = config(&format!(
            "{}{}",
            view("a", "\"x\""),
            keyed("k", "kd", "\"id\"")
        ));
        let plan = ReloadPlan::initial(&c);
        assert_eq!(plan.previous, vec![None, None]);
        assert_eq!(plan.fresh_keys, BTreeSet::from([1]));
        assert!(plan.added.is_empty() && plan.catch_up.is_empty());
    }

    #[test]
    fn a_public_server_keeps_its_token() {
        let public: std::net::SocketAddr = "0.0.0.0:9648".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:9648".parse().unwrap();
        assert_eq!(refuse(public, None), Err(Refused::TokenRemoved(public)));
        assert_eq!(refuse(public, Some("t")), Ok(()));
        assert_eq!(refuse(local, None), Ok(()));
    }
}
