//! Incremental maintenance derived from a view's own SQL (issue 20, SPEC "Incremental
//! maintenance"). A pure wing, like the coalescer: no I/O. Its input is the view's
//! definition (as `pg_get_viewdef` prints it), the view's unique key columns and the
//! catalog facts it needs ([`Catalog`]); its output is a [`Derivation`] (per base
//! table: carries the key, reaches it along a join path, or recompute everything; per
//! output column: delta or group recompute) or a [`Refused`] with the reason.
//!
//! parse → lineage → derive → generate ([`generate`]: the SQL of a keyed conversion,
//! which `init --keyed` writes or applies); [`delta`]: the SQL that applies a fact
//! table's changes to their groups as deltas (row buffer, capture, apply), for the
//! caller to wire into the capture and the keyed refresh.

pub mod delta;
mod dependents;
mod derive;
pub mod generate;
pub mod guard;
mod inserts;
mod lineage;
mod parse;
mod volatile;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod inserts_tests;
#[cfg(test)]
mod tests;

pub use delta::{delta_plan, DeltaFacts, DeltaPlan, DeltaTable, NoDelta};
pub use derive::{
    Carry, ColumnClass, ColumnDerivation, Derivation, How, JoinStep, Path, TableDerivation,
};
pub use inserts::{ForeignKey, InsertGuard};

/// Why a view cannot be derived at all: it stays a materialized view refreshed whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot derive incremental maintenance: {}", self.reason)
    }
}

impl std::error::Error for Refused {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationKind {
    /// A base table (partitioned or not: its partitions are PostgreSQL's business).
    Table,
    /// A plain view, with its definition as `pg_get_viewdef` prints it.
    View { definition: String },
    /// A materialized view: to the derivation, a table whose changes are its refreshes.
    MaterializedView,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: RelationKind,
    pub columns: Vec<String>,
    /// `format_type` of each column, in `columns` order; empty when unknown (every
    /// equi-join then carries the key as if both sides had one type).
    pub types: Vec<String>,
}

/// The catalog facts the derivation needs, as plain data.
#[derive(Debug, Clone)]
pub struct Catalog {
    relations: Vec<Relation>,
    /// Foreign keys that are validated, not deferrable and enforced, between tables
    /// without inheritance children other than partitions ([`inserts`]).
    pub foreign_keys: Vec<ForeignKey>,
    /// Schemas searched, in order, for an unqualified name (default `public`).
    pub search_path: Vec<String>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            relations: Vec::new(),
            foreign_keys: Vec::new(),
            search_path: vec!["public".to_string()],
        }
    }
}

fn split(qualified: &str) -> (String, String) {
    match qualified.split_once('.') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => ("public".to_string(), qualified.to_string()),
    }
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A plain view's definition, as the catalog read holds it.
    pub fn view_definition(&self, schema: &str, name: &str) -> Option<&str> {
        self.relations
            .iter()
            .find(|r| r.schema == schema && r.name == name)
            .and_then(|r| match &r.kind {
                RelationKind::View { definition } => Some(definition.as_str()),
                _ => None,
            })
    }

    pub fn add(&mut self, relation: Relation) {
        self.relations
            .retain(|r| !(r.schema == relation.schema && r.name == relation.name));
        self.relations.push(relation);
    }

    fn with(mut self, qualified: &str, kind: RelationKind, columns: &[&str]) -> Self {
        let (schema, name) = split(qualified);
        self.add(Relation {
            schema,
            name,
            kind,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            types: Vec::new(),
        });
        self
    }

    /// Gives `qualified`'s columns their types (`format_type`), in column order.
    pub fn typed(mut self, qualified: &str, types: &[&str]) -> Self {
        let (schema, name) = split(qualified);
        if let Some(r) = self
            .relations
            .iter_mut()
            .find(|r| r.schema == schema && r.name == name)
        {
            r.types = types.iter().map(|t| t.to_string()).collect();
        }
        self
    }

    /// Adds a base table (`schema.name`, or `name` for `public.name`).
    pub fn table(self, qualified: &str, columns: &[&str]) -> Self {
        self.with(qualified, RelationKind::Table, columns)
    }

    /// Adds a foreign key `table (columns) REFERENCES references (ref_columns)` (tables
    /// qualified, or bare for `public`).
    pub fn foreign_key(
        mut self,
        oid: u32,
        name: &str,
        table: &str,
        columns: &[&str],
        references: &str,
        ref_columns: &[&str],
    ) -> Self {
        let q = |t: &str| {
            let (s, n) = split(t);
            format!("{s}.{n}")
        };
        let strings = |v: &[&str]| v.iter().map(|c| c.to_string()).collect();
        self.foreign_keys.push(ForeignKey {
            oid,
            name: name.to_string(),
            table: q(table),
            columns: strings(columns),
            references: q(references),
            ref_columns: strings(ref_columns),
        });
        self
    }

    pub fn materialized_view(self, qualified: &str, columns: &[&str]) -> Self {
        self.with(qualified, RelationKind::MaterializedView, columns)
    }

    pub fn view(self, qualified: &str, columns: &[&str], definition: &str) -> Self {
        self.with(
            qualified,
            RelationKind::View {
                definition: definition.to_string(),
            },
            columns,
        )
    }

    fn lookup(&self, schema: Option<&str>, name: &str) -> Result<&Relation, Refused> {
        let found = match schema {
            Some(s) => self
                .relations
                .iter()
                .find(|r| r.schema == s && r.name == name),
            None => self.search_path.iter().find_map(|s| {
                self.relations
                    .iter()
                    .find(|r| &r.schema == s && r.name == name)
            }),
        };
        found.ok_or_else(|| Refused {
            reason: format!(
                "relation {}{name} is not in the catalog facts",
                schema.map(|s| format!("{s}.")).unwrap_or_default()
            ),
        })
    }
}

/// Derives incremental maintenance for a view from its definition, its unique key
/// (output column names) and the catalog.
pub fn derive(definition: &str, key: &[&str], catalog: &Catalog) -> Result<Derivation, Refused> {
    let select = parse::parse_view(definition)?;
    let (lineage, output) = lineage::resolve(&select, catalog)?;
    let mut d = derive::derive(&lineage, &output, key)?;
    let mut guards = inserts::guards(&lineage, catalog);
    for t in &mut d.tables {
        t.inserts = guards.remove(&t.table);
    }
    Ok(d)
}
