//! The catalog work a configuration needs before the core loop can use it: the views
//! `run` refuses, the dependency graph between configured views, and the tables that
//! statistics detection watches. At startup it runs before the loop; on a reload it
//! runs on a task of its own, so the loop keeps handling notifications meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{Config, Detect, ViewConfig};
use crate::engine::detect::Watched;
use crate::pg::catalog;
use crate::pg::connect::ConnectInfo;

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
pub fn read_token(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(p) = &config.http.admin_token_file else {
        return Ok(None);
    };
    let path = config.dir().join(p);
    let t = std::fs::read_to_string(&path)
        .with_context(|| format!("http.admin_token_file: cannot read {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(
        !t.is_empty(),
        "http.admin_token_file {} is empty",
        path.display()
    );
    Ok(Some(t))
}

/// Checks `config` against the catalog on `client`.
pub async fn prepare(client: &tokio_postgres::Client, config: Config) -> anyhow::Result<Prepared> {
    let token = read_token(&config)?;
    validate_views(client, &config.views).await?;
    let reads = dependency_graph(client, &config.views).await?;
    let watched = watched_views(client, &config.views).await?;
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
) -> anyhow::Result<Prepared> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let work = async {
        let client = info
            .connect()
            .await
            .context("connecting to check the new views")?;
        prepare(&client, config).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("checking the new views took longer than {timeout:?}"))?
}

/// The views `run` refuses: no usable unique index while `concurrently = true`.
async fn validate_views(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    for v in views {
        let Some(facts) = catalog::inspect(client, v).await? else {
            tracing::error!(view = %v.name, "materialized view does not exist; its refreshes will fail until it is created");
            continue;
        };
        if facts.relkind == 'm' && v.concurrently && facts.usable_unique_indexes.is_empty() {
            refused.push(v.name.to_string());
        }
    }
    anyhow::ensure!(
        refused.is_empty(),
        "no unique index usable by REFRESH CONCURRENTLY on {}: create one, or set concurrently = false for the view",
        refused.join(", ")
    );
    Ok(())
}

/// Which configured views each configured view reads, from the catalog.
pub async fn dependency_graph(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<Vec<Vec<usize>>> {
    let mut oid_to_index = HashMap::new();
    let mut bases = Vec::with_capacity(views.len());
    for (i, v) in views.iter().enumerate() {
        match catalog::inspect(client, v).await? {
            Some(facts) if facts.relkind == 'm' => {
                oid_to_index.insert(facts.oid, i);
                bases.push(facts.base);
            }
            _ => bases.push(Vec::new()),
        }
    }
    Ok(bases
        .iter()
        .map(|b| {
            let mut r: Vec<usize> = b
                .iter()
                .filter_map(|rel| oid_to_index.get(&rel.oid).copied())
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect())
}

/// The tables whose statistics stand for each `detect = "statistics"` view.
async fn watched_views(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<Vec<Watched>> {
    let mut out = Vec::new();
    for v in views.iter().filter(|v| v.detect == Detect::Statistics) {
        let Some(facts) = catalog::inspect(client, v).await? else {
            continue;
        };
        let tables: Vec<u32> = facts
            .base
            .iter()
            .filter(|b| matches!(b.relkind, 'r' | 'm'))
            .map(|b| b.oid)
            .collect();
        tracing::info!(view = %v.name, tables = ?facts.base.iter().map(|b| b.name.to_string()).collect::<Vec<_>>(), "watching table statistics");
        out.push(Watched {
            view: v.name.clone(),
            tables,
            poll_interval: v.poll_interval,
        });
    }
    Ok(out)
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
