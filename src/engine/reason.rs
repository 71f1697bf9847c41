//! Why a refresh runs: the one list of reasons. The `reason` label of
//! `refreshd_refreshes_total`, `/status`'s `last_reason` and the status page all read
//! it from here, so a new reason is one variant, one line in [`Reason::ALL`] and one in
//! [`Reason::as_str`] (the compiler points at the rest), plus its tests.

/// Declares [`Reason`], [`Reason::ALL`] and [`Reason::as_str`] from one list, so they
/// cannot disagree.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)*) => {
        /// Why a view became due.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order its series are written
            /// (`Reason::ALL[r.index()] == r`).
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The `reason` label value (SPEC "Metrics").
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }
        }
    };
}

reasons! {
    /// A notification on one of the view's channels.
    Notify => "notify",
    /// Its cron schedule.
    Schedule => "schedule",
    /// An operator: `refreshd refresh`, `POST /refresh`, SIGUSR1, the control channel.
    Force => "force",
    /// The first refresh after refreshd (or its leadership) starts.
    Startup => "startup",
    /// The LISTEN connection came back: changes may have been missed.
    Resync => "resync",
    /// A view it reads was refreshed.
    Dependency => "dependency",
    /// `detect = "statistics"` saw its base tables change.
    Detected => "detected",
}

impl Reason {
    /// Its position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Which reason labels a refresh that several triggers asked for: an operator's
    /// force first, then the immediate ones, then the ordinary ones.
    pub(crate) const fn rank(self) -> u8 {
        match self {
            Reason::Force => 3,
            Reason::Schedule | Reason::Startup | Reason::Resync => 2,
            Reason::Notify | Reason::Detected | Reason::Dependency => 1,
        }
    }

    /// Reasons that do not wait for the debounce.
    pub(crate) const fn immediate(self) -> bool {
        !matches!(self, Reason::Notify | Reason::Detected | Reason::Dependency)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} out of place in Reason::ALL");
        }
    }

    #[test]
    fn label_values_are_the_ones_spec_lists() {
        // SPEC "Metrics": reason = notify/schedule/force/startup/resync/dependency/detected.
        let labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "notify",
                "schedule",
                "force",
                "startup",
                "resync",
                "dependency",
                "detected"
            ]
        );
    }
}
