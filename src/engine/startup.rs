//! The catalog work a configuration needs before the core loop can use it: the views
//! `run` refuses, the dependency graph between configured views, and the tables that
//! statistics detection watches. At startup it runs before the loop; on a reload it
//! runs on a task of its own, so the loop keeps handling notifications meanwhile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, Detect, ViewConfig};
use crate::engine::detect::Watched;
use crate::pg::catalog::{self, StartupFacts};
use crate::pg::connect::{error_chain, ConnectInfo, DbError};

/// Why a configuration cannot be used (at startup: refreshd exits; on a reload: the
/// old one stays).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The file, or a keyed view that does not fit its table: located (file, line, key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("http.admin_token_file: cannot read {}: {reason}", path.display())]
    TokenUnreadable { path: PathBuf, reason: String },
    #[error("http.admin_token_file {} is empty", path.display())]
    TokenEmpty { path: PathBuf },
    /// A catalog query failed (the error with its causes).
    #[error("{0}")]
    Catalog(String),
    #[error("no unique index usable by REFRESH CONCURRENTLY on {}: create one, or set concurrently = false for the view", .0.join(", "))]
    NoUniqueIndex(Vec<String>),
    #[error("connecting to check the new views: {0}")]
    Connect(DbError),
    #[error("checking the new views took longer than {0:?}")]
    Timeout(Duration),
    /// The reload's task panicked (a bug).
    #[error("the task panicked: {0}")]
    Panicked(String),
}

impl From<tokio_postgres::Error> for StartupError {
    fn from(e: tokio_postgres::Error) -> Self {
        StartupError::Catalog(error_chain(&e))
    }
}

/// A configuration with what the catalog says about it.
#[derive(Debug)]
pub struct Prepared {
    pub config: Arc<Config>,
    /// `reads[i]`: indexes of the configured views view `i` reads.
    pub reads: Vec<Vec<usize>>,
    pub watched: Vec<Watched>,
    /// The admin token read from `http.admin_token_file`.
    pub token: Option<String>,
}

/// Reads the admin token file, if one is configured.
pub fn read_token(config: &Config) -> Result<Option<String>, StartupError> {
    let Some(p) = &config.http.admin_token_file else {
        return Ok(None);
    };
    let path = config.dir().join(p);
    let t = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            let reason = e.to_string();
            return Err(StartupError::TokenUnreadable { path, reason });
        }
    };
    if t.is_empty() {
        return Err(StartupError::TokenEmpty { path });
    }
    Ok(Some(t))
}

/// Checks `config` against the catalog on `client`: a constant number of queries
/// whatever the number of views.
pub async fn prepare(
    client: &tokio_postgres::Client,
    config: Config,
) -> Result<Prepared, StartupError> {
    let token = read_token(&config)?;
    let facts = catalog::startup_facts(client, &config.views).await?;
    refuse_unusable(&config.views, &facts)?;
    refuse_misfits(client, &config).await?;
    let reads = graph(&facts);
    let watched = watched_views(&config.views, &facts);
    Ok(Prepared {
        config: Arc::new(config),
        reads,
        watched,
        token,
    })
}

/// Loads the file at `path` and prepares it on a new connection (a reload).
pub async fn load_and_prepare(
    path: &std::path::Path,
    info: &ConnectInfo,
    timeout: Duration,
) -> Result<Prepared, StartupError> {
    let config = Config::load(path)?;
    let work = async {
        let client = info.connect().await.map_err(StartupError::Connect)?;
        prepare(&client, config).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| StartupError::Timeout(timeout))?
}

/// `run` refuses a view without a unique index usable by CONCURRENTLY unless it sets
/// `concurrently = false`; a missing view is only logged (it fails until created).
fn refuse_unusable(
    views: &[ViewConfig],
    facts: &[Option<StartupFacts>],
) -> Result<(), StartupError> {
    let mut refused = Vec::new();
    for (v, f) in views.iter().zip(facts) {
        match f {
            None if v.keyed.is_some() => {}
            None => {
                tracing::error!(view = %v.name, "materialized view does not exist; its refreshes will fail until it is created")
            }
            Some(f) if f.relkind == 'm' && v.concurrently && !f.has_usable_unique_index => {
                refused.push(v.name.to_string())
            }
            Some(_) => {}
        }
    }
    if !refused.is_empty() {
        return Err(StartupError::NoUniqueIndex(refused));
    }
    Ok(())
}

/// `run` refuses a keyed view whose table and query exist but do not fit together
/// (columns, types, key), naming the file, line and key; a missing one is only logged.
async fn refuse_misfits(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<(), StartupError> {
    for (i, v) in config.views.iter().enumerate() {
        let Some(keyed) = &v.keyed else { continue };
        match crate::pg::keyed::shape(client, v, keyed).await? {
            Ok(_) => {}
            Err(m) if m.missing => {
                tracing::error!(view = %v.name, error = %m.message, "keyed view: its refreshes will fail until this is created")
            }
            Err(m) => {
                return Err(StartupError::Config(ConfigError {
                    file: config.path.clone(),
                    line: Some(v.line),
                    key: Some(format!("view[{i}].{}", m.key)),
                    message: m.message,
                }))
            }
        }
    }
    Ok(())
}

/// For each view, the configured views it reads.
fn graph(facts: &[Option<StartupFacts>]) -> Vec<Vec<usize>> {
    let oid_to_index: HashMap<u32, usize> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.as_ref()
                .filter(|f| f.relkind == 'm' || f.keyed)
                .map(|f| (f.oid, i))
        })
        .collect();
    facts
        .iter()
        .map(|f| {
            let mut r: Vec<usize> = f
                .iter()
                .flat_map(|f| &f.base)
                .filter_map(|rel| oid_to_index.get(&rel.oid).copied())
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect()
}

/// Which configured views each configured view reads, from the catalog (for `check`
/// and `refresh --all`).
pub async fn dependency_graph(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> Result<Vec<Vec<usize>>, StartupError> {
    Ok(graph(&catalog::startup_facts(client, views).await?))
}

/// The tables whose statistics stand for each `detect = "statistics"` view.
fn watched_views(views: &[ViewConfig], facts: &[Option<StartupFacts>]) -> Vec<Watched> {
    let mut out = Vec::new();
    for (v, f) in views.iter().zip(facts) {
        let Some(f) = f.as_ref().filter(|_| v.detect == Detect::Statistics) else {
            continue;
        };
        let tables: Vec<u32> = f
            .base
            .iter()
            .filter(|b| matches!(b.relkind, 'r' | 'm'))
            .map(|b| b.oid)
            .collect();
        tracing::info!(view = %v.name, tables = ?f.base.iter().map(|b| b.name.to_string()).collect::<Vec<_>>(), "watching table statistics");
        out.push(Watched {
            view: v.name.clone(),
            tables,
            poll_interval: v.poll_interval,
        });
    }
    out
}

/// Indexes of `reads` in an order where every view comes after the views it reads;
/// among independent views, the given order. `reads` is acyclic (PostgreSQL cannot
/// build a cycle of materialized views).
pub fn topological_order(reads: &[Vec<usize>]) -> Vec<usize> {
    let mut done = vec![false; reads.len()];
    let mut order = Vec::with_capacity(reads.len());
    fn visit(i: usize, reads: &[Vec<usize>], done: &mut [bool], order: &mut Vec<usize>) {
        if done[i] {
            return;
        }
        done[i] = true;
        for &l in &reads[i] {
            visit(l, reads, done, order);
        }
        order.push(i);
    }
    for i in 0..reads.len() {
        visit(i, reads, &mut done, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_puts_lower_views_first() {
        // 0 reads 2, 2 reads 1; 3 independent.
        let reads = vec![vec![2], vec![], vec![1], vec![]];
        assert_eq!(topological_order(&reads), vec![1, 2, 0, 3]);
        assert_eq!(topological_order(&[vec![], vec![]]), vec![0, 1]);
    }
}
