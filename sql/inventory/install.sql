-- =====================================================
-- refreshd: Inventory Valuation (schema core) — install (entry point)
-- =====================================================
-- Purpose : Creates the inventory seed's schema `core` (migration 003
--           "critical schema fixes"): tables, enum types, cost and brand
--           triggers, the three materialized views,
--           core.refresh_all_inventory_views(), statement-level
--           triggers that NOTIFY refresh_inventory_views, and the keyed
--           variant of core.mv_inventory_valuation (definition view, live
--           table, 8 key-sending triggers on channel inventory_keys).
-- Creates : see 001_core_schema.sql .. 004_keyed_valuation.sql
-- Run     : psql "$DATABASE_URL" -f sql/inventory/install.sql
--           then  psql "$DATABASE_URL" -f sql/inventory/validate.sql
-- Undo    : psql "$DATABASE_URL" -f sql/inventory/rollback.sql
--
-- Idempotent (IF NOT EXISTS / OR REPLACE / DROP IF EXISTS everywhere), one
-- transaction, numbered files are plain SQL (no psql meta-commands).
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\ir 001_core_schema.sql
\ir 002_materialized_views.sql
\ir 003_triggers.sql
\ir 004_keyed_valuation.sql

COMMIT;

\echo 'Inventory views installed. Next: psql -f sql/inventory/validate.sql'
