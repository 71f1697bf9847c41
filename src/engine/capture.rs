//! Capture checks (SPEC "Change capture"): the verdict on one view from what the catalog
//! says (pure, tested here), and the check task the core spawns off its loop.

use std::collections::{BTreeSet, HashMap};

use crate::config::{Capture, Detect, ViewConfig};
use crate::engine::reason::Reason;
pub use crate::pg::capture::Heal;
use crate::pg::capture::{names_channel, TableFacts};
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;

/// A base table or partition whose changes reach none of the view's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub table: QualifiedName,
    pub why: String,
    /// How `managed` closes it; `None` when refreshd cannot (its trigger there already
    /// notifies another channel; a keyed view's table that is no new partition).
    pub heal: Option<Heal>,
}

/// The verdict on one view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub gaps: Vec<Gap>,
    /// Tables read now that were not at the previous check (the definition changed, a
    /// partition was attached).
    pub new_tables: Vec<QualifiedName>,
    /// How many tables read at the previous check are read no more (a partition
    /// detached or dropped: its rows left the view and no trigger fired).
    pub gone_tables: usize,
    /// Every table and partition read now (for the next check); `None` when the view
    /// is fed by the application's own NOTIFY (see [`judge`]).
    pub tables: Option<BTreeSet<u32>>,
}

/// `tables` without the configured views among them: a keyed view's table (a materialized
/// view converted in place is one) is written by refreshd, which refreshes the views
/// reading it after each of its refreshes, as it does a materialized view's readers. No
/// trigger on it is needed.
pub fn not_configured(
    tables: &[TableFacts],
    configured: &std::collections::HashSet<QualifiedName>,
) -> Vec<TableFacts> {
    tables
        .iter()
        .filter(|t| !configured.contains(&t.name))
        .cloned()
        .collect()
}

/// Whether a view's capture is checked at all: `capture` not off, notify detection,
/// channels to check against. A keyed view is checked through its definition (the
/// plain view `query`): the tables it reads need a trigger naming one of its channels.
pub fn checked(v: &ViewConfig) -> bool {
    v.capture != Capture::Off && v.detect == Detect::Notify && !v.channels.is_empty()
}

/// The relation whose reads a check follows: the materialized view, or a keyed view's
/// definition.
pub fn checked_relation(v: &ViewConfig) -> &QualifiedName {
    v.keyed.as_ref().map_or(&v.name, |k| &k.query)
}

/// Whether refreshd's capture is what feeds `v`, even where no trigger names its
/// channels (see [`judge`]): `capture = "managed"` on a materialized view (refreshd is
/// asked to install it), or a channel of refreshd's own naming (`refreshd_...`, as
/// `init` names the channels it makes a capture for, and keyed views' `refreshd_keys_...`):
/// no application notifies those.
pub fn capture_owned(v: &ViewConfig) -> bool {
    (v.capture == Capture::Managed && v.keyed.is_none())
        || v.channels
            .iter()
            .any(|c| c.starts_with(crate::pg::capture::CHANNEL_PREFIX))
}

/// Judges one view: every table and partition needs an enabled trigger whose function
/// or arguments name one of `channels` (the test `check` makes). A view none of whose
/// tables has any trigger (enabled or not) naming its channels, and that had some at no
/// previous check (`previous` is `None`), is fed by the application's own NOTIFY (a
/// design SPEC allows, `check` warns about it): there is no capture to check. Unless
/// the capture is refreshd's (`owned`, [`capture_owned`]): a trigger dropped while no
/// refreshd ran, or never installed, is a gap then (found by a review, 2026-12-05: it
/// went unreported and unhealed for good).
///
/// A gap of a materialized view is healed with refreshd's own trigger. A keyed view's
/// capture was generated for it (keys, join paths), so refreshd's trigger cannot stand
/// in for it: only a partition whose root's triggers reach the view is healed, with
/// copies of those triggers (`keyed`).
pub fn judge(
    channels: &[String],
    tables: &[TableFacts],
    previous: Option<&BTreeSet<u32>>,
    keyed: bool,
    owned: bool,
) -> Verdict {
    let mentioned = tables.iter().any(|t| {
        t.triggers
            .iter()
            .any(|g| channels.iter().any(|c| names_channel(&g.text, c)))
    });
    if !mentioned && previous.is_none() && !owned {
        return Verdict::default();
    }
    let now: BTreeSet<u32> = tables.iter().map(|t| t.oid).collect();
    let mut v = Verdict {
        gone_tables: previous.map_or(0, |p| p.difference(&now).count()),
        tables: Some(now),
        ..Verdict::default()
    };
    let mut seen = BTreeSet::new();
    for t in tables {
        if !seen.insert(t.oid) {
            continue;
        }
        let new = previous.is_some_and(|p| !p.contains(&t.oid));
        if new {
            v.new_tables.push(t.name.clone());
        }
        if notifies(t, channels).is_some() {
            continue;
        }
        v.gaps.push(Gap {
            table: t.name.clone(),
            why: gap_reason(t, tables, channels),
            heal: heal(t, tables, channels, keyed),
        });
    }
    v
}

/// A keyed view whose capture was generated for names its definition no longer reads
/// ([`crate::pg::capture::CaptureFacts::stale`]): every write to a renamed table fails.
/// Healed by converting the view again from its definition (what `init --keyed` run
/// again does), which generates the capture for the names it reads now.
pub fn stale_gap(v: &ViewConfig) -> Gap {
    Gap {
        table: checked_relation(v).clone(),
        why: crate::pg::capture::STALE_CAPTURE.to_string(),
        heal: Some(Heal::ConvertAgain {
            table: v.name.clone(),
        }),
    }
}

/// A keyed view `init --keyed` generated (its configuration names the buffer function
/// only such a conversion has) whose definition view does not say so any more
/// (`generated`: its comment is refreshd's): see [`crate::pg::capture::RECORD_LOST`].
pub fn record_lost(v: &ViewConfig, generated: bool) -> bool {
    !generated && v.keyed.as_ref().is_some_and(|k| k.buffer.is_some())
}

/// [`record_lost`]'s gap, healed as a stale capture is: by converting the view again.
pub fn record_lost_gap(v: &ViewConfig) -> Gap {
    Gap {
        table: checked_relation(v).clone(),
        why: crate::pg::capture::RECORD_LOST.to_string(),
        heal: Some(Heal::ConvertAgain {
            table: v.name.clone(),
        }),
    }
}

/// Every event a generated keyed view's capture has a trigger for, on every table and
/// partition: INSERT, DELETE, UPDATE, TRUNCATE (`tgtype` bits).
pub const ALL_EVENTS: i32 = 4 | 8 | 16 | 32;

/// The events of `t` no trigger naming `channels` captures in every session (enabled
/// ALWAYS, as generated: one enabled only for ordinary writes misses those of a
/// subscription's or a bulk load's `session_replication_role = replica`).
fn uncaptured(t: &TableFacts, channels: &[String]) -> i32 {
    let covered = t
        .triggers
        .iter()
        .filter(|g| g.always && channels.iter().any(|c| names_channel(&g.text, c)))
        .fold(0, |acc, g| acc | g.events);
    ALL_EVENTS & !covered
}

fn event_names(events: i32) -> String {
    [
        (4, "INSERT"),
        (16, "UPDATE"),
        (8, "DELETE"),
        (32, "TRUNCATE"),
    ]
    .iter()
    .filter(|(bit, _)| events & bit != 0)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(", ")
}

/// A keyed view `init --keyed` generated has a trigger for every event on every table
/// and partition it reads: a table some of whose events no enabled trigger captures
/// any more (one dropped or disabled by hand) loses those changes while [`judge`],
/// which asks for one trigger, sees none missing. Such a partition whose root is
/// complete is healed with copies of the root's triggers; anything else by converting
/// the view again ([`Heal::ConvertAgain`], whose install makes every trigger anew): one
/// gap at the definition, naming the tables, added to `verdict` with the partitions'.
/// Gaps [`judge`] found that nothing else heals (every trigger of a table gone) are
/// healed that way too.
pub fn incomplete_gaps(v: &ViewConfig, tables: &[TableFacts], verdict: &mut Verdict) {
    let mut unhealed: Vec<String> = verdict
        .gaps
        .iter()
        .filter(|g| g.heal.is_none())
        .map(|g| g.table.to_string())
        .collect();
    let gapped: BTreeSet<QualifiedName> = verdict.gaps.iter().map(|g| g.table.clone()).collect();
    let mut seen = BTreeSet::new();
    for t in tables {
        if !seen.insert(t.oid) || gapped.contains(&t.name) {
            continue;
        }
        let missing = uncaptured(t, &v.channels);
        if missing == 0 {
            continue;
        }
        let not_always: Vec<String> = t
            .triggers
            .iter()
            .filter(|g| {
                !g.always
                    && g.events & missing != 0
                    && v.channels.iter().any(|c| names_channel(&g.text, c))
            })
            .map(|g| {
                let state = if g.enabled { "not ALWAYS" } else { "disabled" };
                format!("{} {state}", g.name)
            })
            .collect();
        let mut why = format!(
            "no trigger enabled ALWAYS captures its {}",
            event_names(missing)
        );
        if !not_always.is_empty() {
            why.push_str(&format!(" ({})", not_always.join(", ")));
        }
        let root_complete = tables
            .iter()
            .any(|r| r.oid == t.root && r.oid != t.oid && uncaptured(r, &v.channels) == 0);
        if root_complete {
            verdict.gaps.push(Gap {
                table: t.name.clone(),
                why,
                heal: heal(t, tables, &v.channels, true),
            });
        } else {
            unhealed.push(format!("{}: {why}", t.name));
        }
    }
    if !unhealed.is_empty() {
        verdict.gaps.push(Gap {
            table: checked_relation(v).clone(),
            why: format!(
                "its capture is not as `init --keyed` generated it ({}): those changes go unseen until it runs again for this view (with capture = \"managed\", refreshd runs it)",
                unhealed.join("; ")
            ),
            heal: Some(Heal::ConvertAgain {
                table: v.name.clone(),
            }),
        });
    }
}

/// A keyed view's triggers (those naming its channels) on tables it no longer reads: a
/// partition detached since the conversion keeps them, and its writes would still
/// reach the view's buffers (as deltas, into the view). One gap per table, healed by
/// dropping them.
pub fn stray_gaps(
    channels: &[String],
    tables: &[TableFacts],
    triggers: &[crate::pg::capture::ChannelTrigger],
) -> Vec<Gap> {
    let read: BTreeSet<u32> = tables.iter().map(|t| t.oid).collect();
    crate::pg::capture::strays(channels, &read, triggers)
        .into_iter()
        .map(|(table, names)| Gap {
            table,
            why: crate::pg::capture::stray_why(&names),
            heal: Some(Heal::Drop(names)),
        })
        .collect()
}

/// The channel (of `channels`) an enabled trigger of `t` notifies, if any. refreshd's
/// own trigger counts only enabled ALWAYS and for every event, as it installs it:
/// `DISABLE TRIGGER ALL` then `ENABLE TRIGGER ALL` (what bulk loaders and `pg_restore
/// --disable-triggers` leave) makes it fire for ordinary writes only, and a load in the
/// replica role goes unseen; one recreated by hand for INSERT alone misses every UPDATE
/// (a review, 2026-12-05). A trigger of the application's is its own business.
fn notifies(t: &TableFacts, channels: &[String]) -> Option<String> {
    t.triggers
        .iter()
        .filter(|g| g.enabled && (!g.ours || (g.always && g.events & ALL_EVENTS == ALL_EVENTS)))
        .find_map(|g| channels.iter().find(|c| names_channel(&g.text, c)).cloned())
}

/// Why `t` (no enabled trigger of which notifies `channels`) is a gap: its disabled
/// triggers that would, or none at all; and the table it is a partition of.
fn gap_reason(t: &TableFacts, tables: &[TableFacts], channels: &[String]) -> String {
    let disabled: Vec<&str> = t
        .triggers
        .iter()
        .filter(|g| !g.enabled && channels.iter().any(|c| names_channel(&g.text, c)))
        .map(|g| g.name.as_str())
        .collect();
    let not_always = t.triggers.iter().any(|g| {
        g.ours && g.enabled && !g.always && channels.iter().any(|c| names_channel(&g.text, c))
    });
    let partial = t
        .triggers
        .iter()
        .filter(|g| {
            g.ours && g.enabled && g.always && channels.iter().any(|c| names_channel(&g.text, c))
        })
        .map(|g| ALL_EVENTS & !g.events)
        .find(|missing| *missing != 0);
    let mut why = if let Some(missing) = partial {
        format!(
            "trigger {} does not fire on {} (refreshd installs it for INSERT, UPDATE, DELETE and TRUNCATE; init --apply or capture = \"managed\" makes it anew)",
            crate::pg::capture::TRIGGER,
            event_names(missing)
        )
    } else if not_always {
        format!(
            "trigger {trg} is enabled for ordinary writes only, not ALWAYS (as after DISABLE TRIGGER ALL then ENABLE TRIGGER ALL): writes in the replica role go unseen (ALTER TABLE {} ENABLE ALWAYS TRIGGER {trg})",
            t.name.quoted(),
            trg = crate::pg::capture::TRIGGER
        )
    } else if disabled.is_empty() {
        format!("no enabled trigger notifies {}", channels.join(", "))
    } else {
        format!("trigger {} is disabled", disabled.join(", "))
    };
    if t.root != t.oid {
        if let Some(root) = tables.iter().find(|r| r.oid == t.root) {
            why.push_str(&format!(" (partition of {})", root.name));
        }
    }
    why
}

/// How `managed` closes the gap at `t` (see [`judge`]): for a keyed view, copies of
/// its root's triggers that reach the view (a partition only); otherwise refreshd's
/// trigger on the root's channel (a partition) or the view's first, unless refreshd's
/// own trigger is there already (enabled ALWAYS; one that is not is made anew).
fn heal(t: &TableFacts, tables: &[TableFacts], channels: &[String], keyed: bool) -> Option<Heal> {
    let root = tables.iter().find(|r| r.oid == t.root && r.oid != t.oid);
    if keyed {
        return root.and_then(|r| {
            let triggers: Vec<String> = r
                .triggers
                .iter()
                .filter(|g| g.enabled && channels.iter().any(|c| names_channel(&g.text, c)))
                .map(|g| g.name.clone())
                .collect();
            (!triggers.is_empty()).then(|| Heal::CloneRoot {
                root: r.name.clone(),
                triggers,
            })
        });
    }
    // The root's channel for a partition, else the view's first.
    let channel = root
        .and_then(|r| notifies(r, channels))
        .unwrap_or_else(|| channels[0].clone());
    // refreshd's trigger there notifying another view's channel stays; one notifying
    // this view's (for too few events) is made anew.
    let elsewhere = t.triggers.iter().any(|g| {
        g.ours && g.enabled && g.always && !channels.iter().any(|c| names_channel(&g.text, c))
    });
    (!elsewhere).then_some(Heal::Capture(channel))
}

/// What one check found for one view.
#[derive(Debug, Clone)]
pub struct ViewResult {
    pub view: QualifiedName,
    /// Gaps left open, as `/status` lists them.
    pub gaps: Vec<String>,
    /// Gaps refreshd closed by installing its trigger.
    pub healed: Vec<String>,
    pub new_tables: Vec<QualifiedName>,
    pub gone_tables: usize,
    pub tables: Option<BTreeSet<u32>>,
}

/// A whole check: its results, and an error in installing (managed) if there was one.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub views: Vec<ViewResult>,
    pub install_error: Option<String>,
    /// The install failed for concurrent writers only (a lock wait, a deadlock):
    /// tried again soon, as a failed conversion is.
    pub install_met_writers: bool,
    /// Keyed views `managed` could not convert again (a rename made their capture
    /// stale: writes to the renamed table fail until they are), and why: tried again
    /// soon, not at `capture_check_interval`.
    pub conversions_failed: Vec<(QualifiedName, String)>,
    /// The foreign-key guards of keyed views, as their keepers found them
    /// (incremental::guard).
    pub guards: Vec<GuardResult>,
}

/// One keyed view's foreign-key guard at a check.
#[derive(Debug, Clone)]
pub struct GuardResult {
    pub view: QualifiedName,
    /// Its keeper function.
    pub function: QualifiedName,
    pub kept: Result<crate::incremental::guard::Kept, String>,
    /// With [`Kept::Broken`](crate::incremental::guard::Kept::Broken): the
    /// transactions writing the view's tables just after the guard was turned off,
    /// which may have skipped their capture; and the tables.
    pub writers: Vec<String>,
    pub tables: Vec<u32>,
}

/// How long a check may take to read the catalog and install refreshd's triggers (a
/// view converted again is bounded by its own `statement_timeout` instead: it
/// recomputes the view).
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One check of every checked view, in one catalog query; installs the missing triggers
/// of `managed` views (one transaction), and converts again each `managed` keyed view a
/// rename made stale (a transaction each). Runs off the core loop.
/// `read` is told once, as soon as the catalog has been read (`true`), or when the
/// check ends (or is dropped) without having read it (`false`).
pub async fn run_check(
    info: ConnectInfo,
    views: Vec<ViewConfig>,
    previous: HashMap<QualifiedName, BTreeSet<u32>>,
    read: impl FnOnce(bool) + Send,
) -> Result<Report, String> {
    let mut read = ReadSignal(Some(read));
    let configured: std::collections::HashSet<QualifiedName> =
        views.iter().map(|v| v.name.clone()).collect();
    let views: Vec<ViewConfig> = views.into_iter().filter(checked).collect();
    if views.is_empty() {
        read.tell(true);
        return Ok(Report::default());
    }
    let checked = check_and_install(&info, &views, &configured, &previous, &mut read);
    let Checked {
        verdicts,
        heals,
        mut report,
        mut closed,
        keyed_tables,
    } = tokio::time::timeout(CHECK_TIMEOUT, checked)
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                humantime::format_duration(CHECK_TIMEOUT)
            )
        })??;
    for (definition, heal) in &heals {
        let Heal::ConvertAgain { table } = heal else {
            continue;
        };
        let Some(v) = views.iter().find(|v| &v.name == table) else {
            continue;
        };
        match convert_again(&info, v, definition).await {
            Ok(()) => {
                tracing::info!(view = %table, "converted the keyed view again from its definition: its capture was not as generated (a rename, row security turned on or off, a column's NOT NULL or generation expression changed, the definition view replaced or created again, or a trigger dropped or disabled by hand)");
                closed.insert(definition.clone());
            }
            Err(e) => report.conversions_failed.push((table.clone(), e)),
        }
    }
    for (v, verdict) in verdicts {
        report.views.push(view_result(v, verdict, &closed, &heals));
    }
    report.guards = keep_guards(&info, &keyed_tables).await;
    Ok(report)
}

/// How long one guard keeper may take: it scans the referencing tables for rows that
/// reference nothing when it would turn the guard on again.
const KEEPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Calls the guard keeper of every keyed view that has one (incremental::guard), on a
/// connection of its own, each call its own transaction; for a guard found broken, the
/// transactions that may have skipped their capture. A failure is that view's result;
/// a call past [`KEEPER_TIMEOUT`] is cancelled on the server and the next view's keeper
/// gets a new connection (a slow one must not leave the others unchecked: a review,
/// 2026-12-05).
async fn keep_guards(
    info: &ConnectInfo,
    keyed: &[(QualifiedName, QualifiedName, Vec<u32>)],
) -> Vec<GuardResult> {
    if keyed.is_empty() {
        return Vec::new();
    }
    let connect = || async {
        tokio::time::timeout(std::time::Duration::from_secs(15), info.connect())
            .await
            .map_err(|_| "no connection within 15 s".to_string())?
            .map_err(|e| e.to_string())
    };
    let mut client = match connect().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "foreign-key guards: could not connect; they stay as they were");
            return Vec::new();
        }
    };
    let pairs: Vec<(QualifiedName, QualifiedName)> = keyed
        .iter()
        .map(|(v, c, _)| (v.clone(), c.clone()))
        .collect();
    let keepers = match crate::pg::guard::keepers(client.as_ref().expect("connected"), &pairs).await
    {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %crate::pg::connect::error_chain(&e), "foreign-key guards: could not read which views have one");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (view, function) in keepers {
        let tables = keyed
            .iter()
            .find(|(v, _, _)| v == &view)
            .map(|(_, _, t)| t.clone())
            .unwrap_or_default();
        let result = |kept, writers| GuardResult {
            view: view.clone(),
            function: function.clone(),
            kept,
            writers,
            tables: tables.clone(),
        };
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    out.push(result(Err(e), Vec::new()));
                    continue;
                }
            };
        }
        let c = client.as_ref().expect("connected");
        match tokio::time::timeout(KEEPER_TIMEOUT, keep_one(c, &function, &tables)).await {
            Ok(Ok((kept, writers))) => out.push(result(Ok(kept), writers)),
            Ok(Err(e)) => out.push(result(Err(e), Vec::new())),
            Err(_) => {
                if let Err(e) = c.cancel_token().cancel_query(info.tls()).await {
                    tracing::warn!(view = %view, error = %e, "could not send a cancel request for the guard keeper");
                }
                client = None;
                out.push(result(
                    Err(format!(
                        "no answer within {} (cancelled)",
                        humantime::format_duration(KEEPER_TIMEOUT)
                    )),
                    Vec::new(),
                ));
            }
        }
    }
    out
}

/// One keeper call, and for a guard found broken the transactions that may have
/// skipped their capture (on `tables`).
async fn keep_one(
    client: &tokio_postgres::Client,
    function: &QualifiedName,
    tables: &[u32],
) -> Result<(crate::incremental::guard::Kept, Vec<String>), String> {
    let kept = crate::pg::guard::keep(client, function, None).await?;
    let writers = match kept {
        crate::incremental::guard::Kept::Broken(_) => crate::pg::guard::writers(client, tables)
            .await
            .map_err(|e| crate::pg::connect::error_chain(&e))?,
        _ => Vec::new(),
    };
    Ok((kept, writers))
}

/// Tells [`run_check`]'s `read` once: when told, or `false` when dropped untold.
struct ReadSignal<F: FnOnce(bool)>(Option<F>);

impl<F: FnOnce(bool)> ReadSignal<F> {
    fn tell(&mut self, ok: bool) {
        if let Some(f) = self.0.take() {
            f(ok);
        }
    }
}

impl<F: FnOnce(bool)> Drop for ReadSignal<F> {
    fn drop(&mut self) {
        self.tell(false);
    }
}

/// What [`check_and_install`] found and did, for [`run_check`] to finish.
struct Checked<'a> {
    verdicts: Vec<(&'a ViewConfig, Verdict)>,
    heals: Vec<(QualifiedName, Heal)>,
    report: Report,
    /// The tables whose heal was applied.
    closed: BTreeSet<QualifiedName>,
    /// Each keyed view with a change buffer: its consume function and the oids of the
    /// tables it reads.
    keyed_tables: Vec<(QualifiedName, QualifiedName, Vec<u32>)>,
}

/// [`run_check`]'s catalog read, verdicts and trigger installs (all but the conversions).
async fn check_and_install<'a>(
    info: &ConnectInfo,
    views: &'a [ViewConfig],
    configured: &std::collections::HashSet<QualifiedName>,
    previous: &HashMap<QualifiedName, BTreeSet<u32>>,
    read: &mut ReadSignal<impl FnOnce(bool)>,
) -> Result<Checked<'a>, String> {
    let client = info.connect().await.map_err(|e| e.to_string())?;
    let names: Vec<QualifiedName> = views.iter().map(|v| checked_relation(v).clone()).collect();
    let facts = crate::pg::capture::inspect(&client, &names)
        .await
        .map_err(|e| crate::pg::connect::error_chain(&e))?;
    read.tell(true);
    let keyed_channels: Vec<String> = views
        .iter()
        .filter(|v| v.keyed.is_some())
        .flat_map(|v| v.channels.iter().cloned())
        .collect();
    let channel_triggers = crate::pg::capture::channel_triggers(&client, &keyed_channels)
        .await
        .map_err(|e| crate::pg::connect::error_chain(&e))?;
    let mut verdicts = Vec::new();
    for (((v, tables), stale), generated) in views
        .iter()
        .zip(&facts.views)
        .zip(&facts.stale)
        .zip(&facts.generated)
    {
        // A view that is gone is `check`'s and the refresh's business, not capture's.
        let Some(tables) = tables else { continue };
        let mine = not_configured(tables, configured);
        let mut verdict = judge(
            &v.channels,
            &mine,
            previous.get(&v.name),
            v.keyed.is_some(),
            capture_owned(v),
        );
        if *stale {
            verdict.gaps.push(stale_gap(v));
        } else if record_lost(v, *generated) {
            verdict.gaps.push(record_lost_gap(v));
        } else if *generated && v.keyed.is_some() && verdict.tables.is_some() {
            incomplete_gaps(v, &mine, &mut verdict);
        }
        if v.keyed.is_some() {
            verdict
                .gaps
                .extend(stray_gaps(&v.channels, tables, &channel_triggers));
        }
        verdicts.push((v, verdict));
    }
    let keyed_tables = views
        .iter()
        .zip(&facts.views)
        .filter_map(|(v, tables)| {
            let consume = v.keyed.as_ref()?.buffer.clone()?;
            let oids = tables.as_ref()?.iter().map(|t| t.oid).collect();
            Some((v.name.clone(), consume, oids))
        })
        .collect();
    let heals = to_install(&verdicts);
    let mut report = Report::default();
    let mut closed: BTreeSet<QualifiedName> = BTreeSet::new();
    match install(&client, &facts, views, &heals).await {
        Ok(true) => closed.extend(
            heals
                .iter()
                .filter(|(_, h)| !matches!(h, Heal::ConvertAgain { .. }))
                .map(|(t, _)| t.clone()),
        ),
        Ok(false) => {}
        Err((e, met_writers)) => {
            report.install_error = Some(e);
            report.install_met_writers = met_writers;
        }
    }
    Ok(Checked {
        verdicts,
        heals,
        report,
        closed,
        keyed_tables,
    })
}

/// How long a conversion may take when the view has no `statement_timeout`.
const CONVERSION_UNBOUNDED: std::time::Duration = std::time::Duration::from_secs(3600);

/// Converts keyed view `v` again ([`crate::pg::conversion::convert_again`]) on a
/// connection of its own: it recomputes the view, so it is bounded by the view's
/// `statement_timeout` (each statement on the server; here twice that plus the
/// refreshes' grace, or an hour without one), not by [`CHECK_TIMEOUT`]. Past the
/// deadline the server is asked to cancel it and the connection is dropped: nothing is
/// left running that could still commit, and no later conversion meets its transaction.
async fn convert_again(
    info: &ConnectInfo,
    v: &ViewConfig,
    definition: &QualifiedName,
) -> Result<(), String> {
    let client = info.connect().await.map_err(|e| e.to_string())?;
    let deadline = if v.statement_timeout.is_zero() {
        CONVERSION_UNBOUNDED
    } else {
        v.statement_timeout * 2 + crate::pg::outcome::CLIENT_GRACE
    };
    let converting =
        crate::pg::conversion::convert_again(&client, &v.name, definition, v.statement_timeout);
    match tokio::time::timeout(deadline, converting).await {
        Ok(done) => done,
        Err(_) => {
            if let Err(e) = client.cancel_token().cancel_query(info.tls()).await {
                tracing::warn!(view = %v.name, error = %e, "could not send a cancel request for the conversion");
            }
            drop(client);
            Err(format!(
                "converting it again took longer than {} (cancelled)",
                humantime::format_duration(deadline)
            ))
        }
    }
}

/// The triggers to install: the gaps of `managed` views that refreshd can heal, one
/// per table (the first view's way). Under `verify` too, a keyed view's generated
/// triggers left on a table it no longer reads ([`Heal::Drop`], a partition detached)
/// are dropped: `verify` installs nothing, but those triggers are refreshd's own and do
/// harm only, since a write to the detached table was applied to the view as a delta,
/// again after every full refresh (a review, 2026-12-05: sums went negative).
fn to_install(verdicts: &[(&ViewConfig, Verdict)]) -> Vec<(QualifiedName, Heal)> {
    let mut heals: Vec<(QualifiedName, Heal)> = Vec::new();
    for (v, verdict) in verdicts {
        if v.capture == Capture::Off {
            continue;
        }
        for g in &verdict.gaps {
            let stray = matches!(g.heal, Some(Heal::Drop(_)));
            if v.capture != Capture::Managed && !stray {
                continue;
            }
            if let Some(h) = &g.heal {
                if !heals.iter().any(|(t, _)| t == &g.table) {
                    heals.push((g.table.clone(), h.clone()));
                }
            }
        }
    }
    heals
}

/// Installs `heals` (one transaction), with the capture function when refreshd's own
/// triggers need it or an older one must be replaced; whether anything was installed.
/// `Err`: why not, and whether it met concurrent writers only.
async fn install(
    client: &tokio_postgres::Client,
    facts: &crate::pg::capture::CaptureFacts,
    views: &[ViewConfig],
    heals: &[(QualifiedName, Heal)],
) -> Result<bool, (String, bool)> {
    // An older capture function notifies on every writing transaction, or makes
    // two-phase writers fail at PREPARE: replace it.
    let upgrade = facts.function_installed
        && !facts.function_current
        && views.iter().any(|v| v.capture == Capture::Managed);
    // The capture function is (re)installed only for refreshd's own triggers.
    let with_function = !facts.function_current
        && (upgrade || heals.iter().any(|(_, h)| matches!(h, Heal::Capture(_))));
    // A view converted again is not installed here (see `Heal::ConvertAgain`).
    if heals
        .iter()
        .all(|(_, h)| matches!(h, Heal::ConvertAgain { .. }))
        && !upgrade
    {
        return Ok(false);
    }
    match crate::pg::capture::install(client, heals, with_function).await {
        Ok(()) => {
            if upgrade {
                tracing::info!("replaced an older refreshd.notify_changed() (it notified on every writing transaction, or made two-phase writers fail at PREPARE)");
            }
            Ok(true)
        }
        Err(e) => Err((
            crate::pg::connect::error_chain(&e),
            crate::pg::conversion::met_writers(&e),
        )),
    }
}

/// One view's result: each gap healed (`closed` names the tables whose heal of `heals`
/// was applied) or left open.
fn view_result(
    v: &ViewConfig,
    verdict: Verdict,
    closed: &BTreeSet<QualifiedName>,
    heals: &[(QualifiedName, Heal)],
) -> ViewResult {
    let mut r = ViewResult {
        view: v.name.clone(),
        gaps: Vec::new(),
        healed: Vec::new(),
        new_tables: verdict.new_tables,
        gone_tables: verdict.gone_tables,
        tables: verdict.tables,
    };
    for g in verdict.gaps {
        let line = format!("{}: {}", g.table, g.why);
        let closed = closed.contains(&g.table)
            && (v.capture == Capture::Managed || matches!(g.heal, Some(Heal::Drop(_))))
            && g.heal.is_some()
            && heals
                .iter()
                .any(|(t, h)| t == &g.table && Some(h) == g.heal.as_ref());
        if closed {
            r.healed.push(line);
        } else {
            r.gaps.push(line);
        }
    }
    r
}

/// How often the catalog fingerprint is polled for DDL (see
/// [`crate::pg::capture::FINGERPRINT_SQL`]): a new partition, a dropped or disabled
/// trigger, a replaced view, a rename under a keyed view start a capture check within about this long, whatever
/// `capture_check_interval` says.
pub const DDL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Watches the catalog fingerprint on a connection of its own and calls `changed(false)`
/// each time it differs from the previous reading, and `changed(true)` for the first
/// reading. Reconnects after errors; ends when `stop` is cancelled.
///
/// The first reading counts as a change because nothing orders it against the check
/// that leadership starts with: DDL committed after that check read the catalog and
/// before this first reading (its connection is slow on a loaded machine) would
/// otherwise wait for `capture_check_interval` (a CI run missed a row-security change
/// so). It costs one more check at start.
pub async fn watch_ddl(
    info: crate::pg::connect::ConnectInfo,
    stop: tokio_util::sync::CancellationToken,
    changed: impl Fn(bool),
) {
    let mut last: Option<String> = None;
    let mut client: Option<tokio_postgres::Client> = None;
    // The first reading is taken at once.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DDL_POLL) => {}
            }
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = tokio::time::timeout(std::time::Duration::from_secs(15), info.connect())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = &client else { continue };
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            crate::pg::capture::fingerprint(c),
        )
        .await;
        match read {
            Ok(Ok(fp)) => {
                match &last {
                    None => changed(true),
                    Some(l) if *l != fp => changed(false),
                    Some(_) => {}
                }
                last = Some(fp);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::pg::connect::error_chain(&e), "catalog fingerprint: query failed; reconnecting");
                client = None;
            }
            Err(_) => client = None,
        }
    }
}

/// The core's side of capture checks: when the next is due, what the last found.
#[derive(Debug, Default)]
pub struct CaptureState {
    checking: bool,
    next_at: Option<std::time::Instant>,
    tables: HashMap<QualifiedName, BTreeSet<u32>>,
    gaps: HashMap<QualifiedName, Vec<String>>,
    /// When each view's gaps were last logged, and which.
    logged: HashMap<QualifiedName, (std::time::Instant, Vec<String>)>,
    /// After a conversion `managed` could not make, or an install that met concurrent
    /// writers: how soon the next check tries again (doubling from [`DDL_POLL`] up to
    /// [`RETRY_CONVERSION_MAX`]).
    retry: Option<std::time::Duration>,
    /// A check was asked for while one ran ([`CaptureState::check_now`]).
    again: bool,
    /// Catch-up refreshes held until a check has read which tables their views read
    /// ([`CaptureState::hold`]), waiting for the next check to start.
    held: Vec<(QualifiedName, Reason)>,
    /// Those the running check reads for (its number, the view, the reason).
    reading: Vec<(u64, QualifiedName, Reason)>,
    /// The number of the last check started.
    started: u64,
    /// Views whose first reading will come after their content was computed (a
    /// check that failed before reading, or after: its reading was not kept):
    /// refreshed fully when it comes.
    late: std::collections::HashSet<QualifiedName>,
    /// Views released by the running check's reading, until that check's end keeps
    /// the reading (or, failing, loses it: they are late then).
    released: Vec<QualifiedName>,
    /// The last check that ended, and whether it failed.
    ended: Option<(u64, bool)>,
    /// Held only because a view they read is held ([`CaptureState::follow`]): released
    /// with it, never late (no check reads for them).
    following: std::collections::HashSet<QualifiedName>,
}

/// The longest wait before a failed conversion is tried again (less when
/// `capture_check_interval` is shorter).
pub const RETRY_CONVERSION_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl CaptureState {
    /// Check as soon as possible (start, LISTEN (re)connect, DDL seen). Asked while a
    /// check runs, the next one starts as soon as it ends (what it saw may predate the
    /// DDL).
    pub fn check_now(&mut self) {
        if self.checking {
            self.again = true;
        }
        self.next_at = Some(std::time::Instant::now());
    }

    /// A check is due and none is running: it is marked running, and its number
    /// returned (for [`CaptureState::read`]).
    pub fn start_if_due(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.checking || self.next_at.is_none_or(|t| now < t) {
            return None;
        }
        self.checking = true;
        self.started += 1;
        let n = self.started;
        self.reading
            .extend(self.held.drain(..).map(|(v, r)| (n, v, r)));
        Some(n)
    }

    /// Whether a check has recorded which tables `view` reads.
    pub fn has_baseline(&self, view: &QualifiedName) -> bool {
        self.tables.contains_key(view)
    }

    /// Holds a view's catch-up refresh (startup, resync, added by a reload) until a
    /// check has read which tables it reads, and asks for that check now. Refreshed
    /// first, a view would miss a partition detached (or attached, or a view under it
    /// replaced) between its refresh and that first reading: the reading would already
    /// be the new one, and nothing would differ from it at the next check.
    pub fn hold(&mut self, view: QualifiedName, reason: Reason) {
        self.held.push((view, reason));
        self.check_now();
    }

    /// Check number `check` has read the catalog (`ok`), or ended before it could:
    /// the catch-ups it held, to be marked now. Those it could not read for are
    /// refreshed fully again when a later check first reads their tables.
    pub fn read(&mut self, check: u64, ok: bool) -> Vec<(QualifiedName, Reason)> {
        // Told after the check's end (both come back separately): a failed check kept
        // no reading.
        let ended = self.ended.filter(|(n, _)| *n == check);
        let ok = ok && !ended.is_some_and(|(_, failed)| failed);
        let mut out = Vec::new();
        self.reading.retain(|(n, v, r)| {
            if *n != check {
                return true;
            }
            out.push((v.clone(), *r));
            false
        });
        // Collected at once: every follower leaves `following` here, whichever branch
        // below (if any) takes the rest.
        let read: Vec<QualifiedName> = out
            .iter()
            .map(|(v, _)| v)
            .filter(|v| !self.following.remove(*v))
            .cloned()
            .collect();
        if !ok {
            self.late.extend(read);
        } else if ended.is_none() {
            self.released.extend(read);
        }
        out
    }

    /// Whether `view`'s catch-up is held ([`CaptureState::hold`] or
    /// [`CaptureState::follow`]) until a check reads.
    pub fn waiting(&self, view: &QualifiedName) -> bool {
        self.held.iter().any(|(v, _)| v == view) || self.reading.iter().any(|(_, v, _)| v == view)
    }

    /// Holds the catch-up of a view that reads a held one (SPEC: a view that reads
    /// another is refreshed after it, never before): released with it, so that both
    /// are due at once and the upper one waits for the lower. A view with no channels
    /// of its own (refreshed only after what it reads) has no capture to check and
    /// would otherwise go first.
    pub fn follow(&mut self, view: QualifiedName, reason: Reason) {
        self.following.insert(view.clone());
        self.held.push((view, reason));
    }

    /// Holds `v`'s catch-up ([`CaptureState::hold`]) if its capture is checked and no
    /// check has read what it reads yet; whether it did (else the caller marks it).
    pub fn hold_unread(&mut self, v: &ViewConfig, reason: Reason) -> bool {
        let unread = checked(v) && !self.has_baseline(&v.name);
        if unread {
            self.hold(v.name.clone(), reason);
        }
        unread
    }

    /// Leadership lost: the held catch-ups are moot (the next leadership catches every
    /// view up).
    pub fn drop_held(&mut self) {
        self.held.clear();
        self.reading.clear();
        self.released.clear();
        self.following.clear();
    }

    /// What the previous checks saw each view read.
    pub fn previous(&self) -> HashMap<QualifiedName, BTreeSet<u32>> {
        self.tables.clone()
    }

    /// The gaps `/status` lists for a view.
    pub fn gaps(&self, view: &QualifiedName) -> Vec<String> {
        self.gaps.get(view).cloned().unwrap_or_default()
    }

    /// Takes a check's result: sets the gauges, logs (at most once per `interval` per
    /// view unless its gaps change), and returns the views to refresh fully (open gaps,
    /// closed gaps, or a definition that reads new tables: changes may have been missed).
    pub fn finished(
        &mut self,
        result: Result<Report, String>,
        interval: std::time::Duration,
        metrics: &crate::serve::per_view::PerView,
    ) -> Vec<QualifiedName> {
        let now = std::time::Instant::now();
        self.checking = false;
        let asked = if std::mem::take(&mut self.again) {
            std::time::Duration::ZERO
        } else {
            interval
        };
        self.next_at = Some(now + asked);
        self.ended = Some((self.started, result.is_err()));
        let released = std::mem::take(&mut self.released);
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                // Their catch-ups went ahead on this check's reading, which is lost.
                self.late.extend(released);
                // A conversion waiting to be tried again keeps its pace.
                if let Some(w) = self.retry {
                    self.next_at = Some(now + w.min(asked));
                }
                tracing::warn!(error = %e, "capture check failed; retrying at the next one");
                return Vec::new();
            }
        };
        self.schedule_retry(&report, now, asked, interval);
        let mut refresh = Vec::new();
        for r in report.views {
            // A view `managed` could not convert again: its failure was logged, with
            // what happens next, and it is not refreshed (its refresh would hold the
            // table the next attempt needs, and reads what was renamed).
            let converting = report.conversions_failed.iter().any(|(v, _)| *v == r.view);
            let view = r.view.clone();
            // Its first reading, taken after its content was: what changed between
            // cannot be known.
            let late =
                r.tables.is_some() && !self.tables.contains_key(&view) && self.late.remove(&view);
            if late {
                tracing::info!(view = %view, "the first capture check that read which tables the view reads came after its catch-up refresh (an earlier check failed); refreshing it fully");
            }
            if (self.take_view(r, converting, now, interval, metrics) || late) && !converting {
                refresh.push(view);
            }
        }
        refresh
    }

    /// After an install that met writers or a failed conversion: the next check in 2 s,
    /// doubling up to [`RETRY_CONVERSION_MAX`] (never later than `asked`); logs them.
    fn schedule_retry(
        &mut self,
        report: &Report,
        now: std::time::Instant,
        asked: std::time::Duration,
        interval: std::time::Duration,
    ) {
        let wait = self
            .retry
            .map_or(DDL_POLL, |w| w * 2)
            .min(RETRY_CONVERSION_MAX)
            .min(interval);
        if let Some(e) = &report.install_error {
            if report.install_met_writers {
                tracing::error!(error = %e, retry_in = %humantime::format_duration(wait), "capture = \"managed\": installing the missing capture triggers met concurrent writers (nothing was changed); trying again");
            } else {
                tracing::error!(error = %e, "capture = \"managed\": could not install the missing capture triggers (the role needs CREATE on schema refreshd and TRIGGER on the tables); the views are refreshed fully at each check until it can");
            }
        }
        if report.conversions_failed.is_empty() && !report.install_met_writers {
            self.retry = None;
            return;
        }
        self.retry = Some(wait);
        self.next_at = Some(now + wait.min(asked));
        for (view, e) in &report.conversions_failed {
            tracing::error!(view = %view, error = %e, retry_in = %humantime::format_duration(wait), "capture = \"managed\": could not convert the keyed view again (a rename made its capture stale: writes to the renamed table fail until it is converted, and its refreshes fail where they read what was renamed); trying again");
        }
    }

    /// Takes one view's result: its gauge, its log lines (the gap warning at most once
    /// per `interval` unless the gaps change; none while `converting`, whose failure was
    /// logged), what it reads and its gaps. Whether it is to be refreshed fully (open
    /// gaps, closed gaps, or a definition that reads new tables or no longer reads
    /// some: changes may have been missed).
    fn take_view(
        &mut self,
        r: ViewResult,
        converting: bool,
        now: std::time::Instant,
        interval: std::time::Duration,
        metrics: &crate::serve::per_view::PerView,
    ) -> bool {
        metrics.set_capture_gaps(&r.view.to_string(), r.gaps.len() as u64);
        if !r.healed.is_empty() {
            let tables: Vec<&str> = r
                .healed
                .iter()
                .map(|h| h.split_once(": ").map_or(h.as_str(), |(t, _)| t))
                .collect();
            tracing::info!(view = %r.view, healed = ?tables, "capture = \"managed\": closed the capture gap(s) at these tables; refreshing the view fully (changes in the gap were not captured)");
        }
        if !r.new_tables.is_empty() {
            let tables: Vec<String> = r.new_tables.iter().map(|t| t.to_string()).collect();
            tracing::info!(view = %r.view, tables = ?tables, "the view reads table(s) it did not read at the previous capture check; refreshing it fully");
        }
        if r.gone_tables > 0 {
            tracing::info!(view = %r.view, tables = r.gone_tables, "the view no longer reads table(s) it read at the previous capture check (a partition detached or dropped: its rows left without a trigger); refreshing it fully");
        }
        if r.gaps.is_empty() {
            self.logged.remove(&r.view);
        } else if !converting {
            let due = self.logged.get(&r.view).is_none_or(|(at, last)| {
                *last != r.gaps || now.saturating_duration_since(*at) >= interval
            });
            if due {
                tracing::warn!(view = %r.view, gaps = ?r.gaps, "change capture is incomplete: changes to these tables reach none of the view's channels; refreshing it fully at each capture check until fixed (a materialized view: refreshd init --apply; a keyed view: refreshd init --keyed VIEW --apply, with --in-place if it was converted so; or capture = \"managed\")");
                self.logged.insert(r.view.clone(), (now, r.gaps.clone()));
            }
        }
        let refresh = !r.gaps.is_empty()
            || !r.healed.is_empty()
            || !r.new_tables.is_empty()
            || r.gone_tables > 0;
        match r.tables {
            Some(t) => {
                self.tables.insert(r.view.clone(), t);
            }
            None => {
                self.tables.remove(&r.view);
            }
        }
        self.gaps.insert(r.view, r.gaps);
        refresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::capture::TriggerFacts;

    fn table(oid: u32, name: &str, root: u32, triggers: Vec<TriggerFacts>) -> TableFacts {
        TableFacts {
            oid,
            name: QualifiedName::new("s", name),
            root,
            triggers,
        }
    }

    fn trig(name: &str, enabled: bool, ours: bool, text: &str) -> TriggerFacts {
        TriggerFacts {
            name: name.into(),
            enabled,
            events: ALL_EVENTS,
            always: enabled,
            ours,
            text: text.into(),
        }
    }

    #[test]
    fn captured_tables_have_no_gap() {
        let ch = vec!["c_pay".to_string()];
        let tables = vec![
            table(
                1,
                "pay",
                1,
                vec![trig("refreshd_notify", true, true, "x c_pay\\000")],
            ),
            table(
                2,
                "pay_1",
                1,
                vec![trig("t", true, false, "pg_notify('c_pay', '')")],
            ),
        ];
        let v = judge(&ch, &tables, None, false, false);
        assert!(v.gaps.is_empty(), "{v:?}");
        assert!(v.new_tables.is_empty());
    }

    /// refreshd's own trigger left enabled for ordinary writes only (`DISABLE TRIGGER
    /// ALL` then `ENABLE TRIGGER ALL`) is a gap `managed` closes by making it anew; an
    /// application's trigger enabled that way is its own business.
    #[test]
    fn refreshds_trigger_not_always_is_a_gap_an_applications_is_not() {
        let ch = vec!["c_pay".to_string()];
        let mut ours = trig("refreshd_notify", true, true, "x c_pay\\000");
        ours.always = false;
        let v = judge(&ch, &[table(1, "pay", 1, vec![ours])], None, false, false);
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        assert!(v.gaps[0].why.contains("not ALWAYS"), "{}", v.gaps[0].why);
        assert!(
            matches!(&v.gaps[0].heal, Some(Heal::Capture(c)) if c == "c_pay"),
            "{:?}",
            v.gaps[0].heal
        );
        let mut theirs = trig("t", true, false, "pg_notify('c_pay', '')");
        theirs.always = false;
        let v = judge(&ch, &[table(1, "pay", 1, vec![theirs])], None, false, false);
        assert!(v.gaps.is_empty(), "{v:?}");
    }

    /// A view no trigger names the channels of is fed by the application's NOTIFY,
    /// unless the capture is refreshd's own: a channel refreshd named, or `managed` on
    /// a materialized view. Then a table without the trigger is a gap `managed` closes.
    #[test]
    fn a_table_without_refreshds_trigger_is_a_gap_when_the_capture_is_refreshds() {
        let tables = vec![table(1, "orders", 1, vec![])];
        let app = vec!["orders_changed".to_string()];
        assert!(judge(&app, &tables, None, false, false).gaps.is_empty());
        let ours = vec!["refreshd_s_orders".to_string()];
        let v = judge(&ours, &tables, None, false, true);
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        assert!(
            matches!(&v.gaps[0].heal, Some(Heal::Capture(c)) if c == "refreshd_s_orders"),
            "{:?}",
            v.gaps[0].heal
        );
        let config = |capture: &str, channel: &str| {
            crate::config::Config::parse(std::path::Path::new("t.toml"), &format!(
                "[database]\nurl = \"postgresql://x@h/d\"\n[[view]]\nname = \"s.v\"\nchannels = [\"{channel}\"]\ncapture = \"{capture}\"\n"
            ))
            .unwrap()
            .views
            .remove(0)
        };
        assert!(!capture_owned(&config("verify", "orders_changed")));
        assert!(capture_owned(&config("verify", "refreshd_s_orders")));
        assert!(capture_owned(&config("managed", "orders_changed")));
    }

    /// refreshd's own trigger recreated by hand for fewer events is a gap (a review:
    /// one for INSERT alone counted as complete, and every UPDATE went unseen), made
    /// anew; refreshd's trigger notifying another view's channel is left alone.
    #[test]
    fn refreshds_trigger_for_fewer_events_is_a_gap_made_anew() {
        let ch = vec!["c_pay".to_string()];
        let mut ours = trig("refreshd_notify", true, true, "c_pay\\000");
        ours.events = 4;
        let v = judge(&ch, &[table(1, "pay", 1, vec![ours])], None, false, false);
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        assert!(
            v.gaps[0]
                .why
                .contains("does not fire on UPDATE, DELETE, TRUNCATE"),
            "{}",
            v.gaps[0].why
        );
        assert!(matches!(&v.gaps[0].heal, Some(Heal::Capture(c)) if c == "c_pay"));
        let other = trig("refreshd_notify", true, true, "c_other\\000");
        let v = judge(&ch, &[table(1, "pay", 1, vec![other])], None, false, true);
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        assert_eq!(v.gaps[0].heal, None);
    }

    #[test]
    fn a_configured_views_table_needs_no_trigger() {
        let ch = vec!["c_names".to_string()];
        let tables = vec![
            table(1, "by_store", 1, vec![]),
            table(
                2,
                "names",
                2,
                vec![trig("t", true, true, "refreshd.notify_changed('c_names')")],
            ),
        ];
        assert_eq!(judge(&ch, &tables, None, false, false).gaps.len(), 1);
        let configured = [tables[0].name.clone()].into_iter().collect();
        let v = judge(
            &ch,
            &not_configured(&tables, &configured),
            None,
            false,
            false,
        );
        assert!(v.gaps.is_empty(), "{v:?}");
    }

    #[test]
    fn a_view_the_application_notifies_has_nothing_to_check_until_captured_once() {
        let ch = vec!["app".to_string()];
        let tables = vec![table(
            1,
            "a",
            1,
            vec![trig("audit", true, false, "insert into log")],
        )];
        let v = judge(&ch, &tables, None, false, false);
        assert!(v.gaps.is_empty() && v.tables.is_none(), "{v:?}");
        // Captured at an earlier check, every trigger dropped since: a gap.
        let prev: BTreeSet<u32> = [1].into_iter().collect();
        assert_eq!(judge(&ch, &tables, Some(&prev), false, false).gaps.len(), 1);
    }

    #[test]
    fn a_partition_read_no_more_is_counted_gone() {
        let ch = vec!["c_pay".to_string()];
        let tables = vec![table(
            1,
            "pay",
            1,
            vec![trig("refreshd_notify", true, true, "c_pay\\000")],
        )];
        let prev: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        let v = judge(&ch, &tables, Some(&prev), false, false);
        assert!(v.gaps.is_empty() && v.new_tables.is_empty(), "{v:?}");
        assert_eq!(v.gone_tables, 2);
        assert_eq!(judge(&ch, &tables, None, false, false).gone_tables, 0);
    }

    #[test]
    fn a_new_partition_gets_the_roots_channel() {
        let ch = vec!["c_other".to_string(), "c_pay".to_string()];
        let tables = vec![
            table(
                1,
                "pay",
                1,
                vec![trig("refreshd_notify", true, true, "c_pay\\000")],
            ),
            table(3, "pay_new", 1, vec![]),
        ];
        let prev: BTreeSet<u32> = [1].into_iter().collect();
        let v = judge(&ch, &tables, Some(&prev), false, false);
        assert_eq!(v.gaps.len(), 1);
        assert_eq!(v.gaps[0].heal, Some(Heal::Capture("c_pay".into())));
        assert!(
            v.gaps[0].why.contains("partition of s.pay"),
            "{}",
            v.gaps[0].why
        );
        assert_eq!(v.new_tables, vec![QualifiedName::new("s", "pay_new")]);
    }

    #[test]
    fn disabled_triggers_and_foreign_channels_are_gaps() {
        let ch = vec!["c".to_string()];
        let tables = vec![
            table(
                1,
                "a",
                1,
                vec![trig("refreshd_notify", false, true, "c\\000")],
            ),
            table(
                2,
                "b",
                2,
                vec![trig("refreshd_notify", true, true, "other\\000")],
            ),
        ];
        let v = judge(&ch, &tables, None, false, false);
        assert_eq!(v.gaps.len(), 2);
        assert!(v.gaps[0].why.contains("refreshd_notify is disabled"));
        assert_eq!(v.gaps[0].heal, Some(Heal::Capture("c".into())));
        // refreshd's trigger there notifies another channel: not replaced.
        assert_eq!(v.gaps[1].heal, None);
    }

    #[test]
    fn a_keyed_views_new_partition_gets_copies_of_its_roots_triggers_only() {
        let ch = vec!["refreshd_keys_v".to_string()];
        let tables = vec![
            table(
                1,
                "pay",
                1,
                vec![
                    trig(
                        "v_keys_insert",
                        true,
                        false,
                        "pg_notify('refreshd_keys_v', k)",
                    ),
                    trig("audit", true, false, "insert into log"),
                    trig(
                        "v_keys_old",
                        false,
                        false,
                        "pg_notify('refreshd_keys_v', k)",
                    ),
                ],
            ),
            table(3, "pay_new", 1, vec![]),
            // Not a partition: refreshd's own trigger cannot stand in for generated
            // capture, so the gap stays open.
            table(4, "other", 4, vec![]),
        ];
        let v = judge(&ch, &tables, None, true, false);
        assert_eq!(v.gaps.len(), 2, "{v:?}");
        assert_eq!(
            v.gaps[0].heal,
            Some(Heal::CloneRoot {
                root: QualifiedName::new("s", "pay"),
                triggers: vec!["v_keys_insert".into()],
            })
        );
        assert_eq!(v.gaps[1].heal, None);
    }

    #[test]
    fn a_keyed_views_triggers_on_a_table_it_no_longer_reads_are_dropped() {
        let ch = vec!["refreshd_keys_v".to_string()];
        let tables = vec![table(1, "pay", 1, vec![]), table(2, "pay_2025", 1, vec![])];
        let on = |oid: u32, t: &str, name: &str, text: &str| crate::pg::capture::ChannelTrigger {
            table_oid: oid,
            table: QualifiedName::new("s", t),
            name: name.into(),
            text: text.into(),
        };
        let triggers = vec![
            on(
                2,
                "pay_2025",
                "v_keys_insert",
                "pg_notify('refreshd_keys_v', '')",
            ),
            on(
                9,
                "pay_2024",
                "v_keys_insert",
                "pg_notify('refreshd_keys_v', '')",
            ),
            on(
                9,
                "pay_2024",
                "v_keys_delete",
                "pg_notify('refreshd_keys_v', '')",
            ),
            // Another view's channel (a prefix of it is not this one).
            on(
                9,
                "pay_2024",
                "v1_keys_insert",
                "pg_notify('refreshd_keys_v1', '')",
            ),
        ];
        let gaps = stray_gaps(&ch, &tables, &triggers);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].table, QualifiedName::new("s", "pay_2024"));
        assert_eq!(
            gaps[0].heal,
            Some(Heal::Drop(vec![
                "v_keys_insert".into(),
                "v_keys_delete".into()
            ]))
        );
        assert!(stray_gaps(&ch, &tables, &triggers[..1]).is_empty());
    }

    fn checked_view(name: &str, tables: &[u32]) -> ViewResult {
        ViewResult {
            view: QualifiedName::new("s", name),
            gaps: Vec::new(),
            healed: Vec::new(),
            new_tables: Vec::new(),
            gone_tables: 0,
            tables: Some(tables.iter().copied().collect()),
        }
    }

    /// Another check, reading view `a` (table 1): the views it refreshes fully.
    fn next_check(
        c: &mut CaptureState,
        metrics: &crate::serve::per_view::PerView,
    ) -> Vec<QualifiedName> {
        c.check_now();
        c.start_if_due(std::time::Instant::now()).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        c.finished(report(vec![checked_view("a", &[1])]), hour, metrics)
    }

    fn report(views: Vec<ViewResult>) -> Result<Report, String> {
        Ok(Report {
            views,
            ..Report::default()
        })
    }

    #[test]
    fn held_catch_ups_wait_for_the_check_that_reads_for_them() {
        let (a, b) = (QualifiedName::new("s", "a"), QualifiedName::new("s", "b"));
        let metrics = crate::serve::per_view::PerView::default();
        let hour = std::time::Duration::from_secs(3600);
        let mut c = CaptureState::default();
        assert!(!c.has_baseline(&a));
        c.hold(a.clone(), Reason::Startup);
        let now = std::time::Instant::now();
        let first = c.start_if_due(now).expect("hold asks for a check now");
        // Held while the first check runs: it reads for the next one.
        c.hold(b.clone(), Reason::Startup);
        assert_eq!(c.read(first + 1, true), vec![]);
        assert_eq!(c.read(first, true), vec![(a.clone(), Reason::Startup)]);
        assert_eq!(c.read(first, true), vec![], "told once");
        // Its reading becomes a's baseline; a was refreshed after it: nothing to redo.
        assert_eq!(
            c.finished(report(vec![checked_view("a", &[1, 2])]), hour, &metrics),
            Vec::<QualifiedName>::new()
        );
        assert!(c.has_baseline(&a));
        let second = c
            .start_if_due(std::time::Instant::now())
            .expect("asked again");
        assert!(second > first);
        assert_eq!(c.read(second, true), vec![(b.clone(), Reason::Startup)]);
        // Then a partition of a detached: the next check sees it gone.
        let mut gone = checked_view("a", &[1]);
        gone.gone_tables = 1;
        assert_eq!(
            c.finished(report(vec![gone, checked_view("b", &[3])]), hour, &metrics),
            vec![a.clone()]
        );
    }

    #[test]
    fn a_view_first_read_after_its_catch_up_is_refreshed_fully() {
        let a = QualifiedName::new("s", "a");
        let metrics = crate::serve::per_view::PerView::default();
        let hour = std::time::Duration::from_secs(3600);
        let mut c = CaptureState::default();
        c.hold(a.clone(), Reason::Resync);
        let first = c.start_if_due(std::time::Instant::now()).unwrap();
        // The check could not read (connection refused): the catch-up goes ahead.
        assert_eq!(c.read(first, false), vec![(a.clone(), Reason::Resync)]);
        assert!(c.finished(Err("refused".into()), hour, &metrics).is_empty());
        c.check_now();
        let second = c.start_if_due(std::time::Instant::now()).unwrap();
        assert_eq!(c.read(second, true), vec![]);
        // Its first reading came after its refresh: refreshed fully, once.
        assert_eq!(
            c.finished(report(vec![checked_view("a", &[1])]), hour, &metrics),
            vec![a.clone()]
        );
        assert!(next_check(&mut c, &metrics).is_empty());
    }

    #[test]
    fn a_reading_lost_with_its_failed_check_makes_the_view_late() {
        let a = QualifiedName::new("s", "a");
        let metrics = crate::serve::per_view::PerView::default();
        let hour = std::time::Duration::from_secs(3600);
        for told_first in [true, false] {
            let mut c = CaptureState::default();
            c.hold(a.clone(), Reason::Startup);
            let n = c.start_if_due(std::time::Instant::now()).unwrap();
            // The catalog was read, then the check failed (a timeout, a lost
            // connection); the two news come back in either order.
            if told_first {
                assert_eq!(c.read(n, true), vec![(a.clone(), Reason::Startup)]);
                assert!(c.finished(Err("lost".into()), hour, &metrics).is_empty());
            } else {
                assert!(c.finished(Err("lost".into()), hour, &metrics).is_empty());
                assert_eq!(c.read(n, true), vec![(a.clone(), Reason::Startup)]);
            }
            assert_eq!(
                next_check(&mut c, &metrics),
                vec![a.clone()],
                "told first: {told_first}"
            );
        }
        // A check that ends well keeps its reading: nothing to redo.
        let mut c = CaptureState::default();
        c.hold(a.clone(), Reason::Startup);
        let n = c.start_if_due(std::time::Instant::now()).unwrap();
        c.read(n, true);
        assert!(c
            .finished(report(vec![checked_view("a", &[1])]), hour, &metrics)
            .is_empty());
        assert!(next_check(&mut c, &metrics).is_empty());
    }

    #[test]
    fn a_view_following_a_held_one_is_released_with_it_and_never_late() {
        let (a, b) = (QualifiedName::new("s", "a"), QualifiedName::new("s", "b"));
        let metrics = crate::serve::per_view::PerView::default();
        let hour = std::time::Duration::from_secs(3600);
        let mut c = CaptureState::default();
        c.hold(a.clone(), Reason::Startup);
        c.follow(b.clone(), Reason::Startup);
        assert!(c.waiting(&a) && c.waiting(&b));
        let n = c.start_if_due(std::time::Instant::now()).unwrap();
        assert!(c.waiting(&a) && c.waiting(&b));
        // The check fails before its reading: both are released at once (the lower
        // one is refreshed first, as the coalescer orders them), only the held one late.
        assert_eq!(
            c.read(n, false),
            vec![(a.clone(), Reason::Startup), (b.clone(), Reason::Startup)]
        );
        assert!(!c.waiting(&a) && !c.waiting(&b));
        assert!(c.finished(Err("lost".into()), hour, &metrics).is_empty());
        c.check_now();
        c.start_if_due(std::time::Instant::now()).unwrap();
        assert_eq!(
            c.finished(
                report(vec![checked_view("a", &[1]), checked_view("b", &[2])]),
                hour,
                &metrics
            ),
            vec![a.clone()]
        );
    }

    /// A follower read by a check that had already ended stayed marked as one, and when
    /// it was later held for a reading of its own, a failed check did not make it late.
    #[test]
    fn a_follower_read_after_its_check_ended_is_no_follower_any_more() {
        let b = QualifiedName::new("s", "b");
        let metrics = crate::serve::per_view::PerView::default();
        let hour = std::time::Duration::from_secs(3600);
        let mut c = CaptureState::default();
        c.follow(b.clone(), Reason::Startup);
        c.check_now();
        let n = c.start_if_due(std::time::Instant::now()).unwrap();
        assert!(c.finished(report(vec![]), hour, &metrics).is_empty());
        assert_eq!(c.read(n, true), vec![(b.clone(), Reason::Startup)]);
        // Held for a reading of its own now, by a check that fails before reading.
        c.hold(b.clone(), Reason::Resync);
        let m = c.start_if_due(std::time::Instant::now()).unwrap();
        assert_eq!(c.read(m, false), vec![(b.clone(), Reason::Resync)]);
        assert!(c.finished(Err("lost".into()), hour, &metrics).is_empty());
        c.check_now();
        c.start_if_due(std::time::Instant::now()).unwrap();
        assert_eq!(
            c.finished(report(vec![checked_view("b", &[2])]), hour, &metrics),
            vec![b.clone()]
        );
    }

    #[test]
    fn losing_leadership_drops_what_was_held() {
        let a = QualifiedName::new("s", "a");
        let mut c = CaptureState::default();
        c.hold(a.clone(), Reason::Startup);
        let n = c.start_if_due(std::time::Instant::now()).unwrap();
        c.drop_held();
        assert_eq!(c.read(n, true), vec![]);
    }
}
