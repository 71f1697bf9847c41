//! Everything that speaks SQL: connecting, the catalog, the refresh statement, and
//! identifier quoting.

pub mod capture;
pub mod catalog;
pub mod connect;
pub mod conversion;
pub mod definitions;
pub mod force;
pub mod guard;
pub mod ident;
pub mod keyed;
pub mod keyed_check;
pub mod notify;
pub mod outcome;
pub mod refresh;
pub mod wakes;
