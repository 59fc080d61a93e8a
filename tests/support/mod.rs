//! Shared test fixtures: a store per backend, each isolated per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use dockhand::store::{AnyStore, MemoryStore, PostgresStore, SqliteStore, Store};

/// Keeps a test's resources (temp dir) alive.
pub enum Guard {
    /// Nothing to keep.
    None,
    /// A temporary directory.
    Dir(tempfile::TempDir),
}

pub async fn memory_store(_name: &str) -> (AnyStore, Guard) {
    (AnyStore::Memory(MemoryStore::new()), Guard::None)
}

pub async fn sqlite_store(_name: &str) -> (AnyStore, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = SqliteStore::open(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    (AnyStore::Sqlite(store), Guard::Dir(dir))
}

/// The test server's URL; its absence is a failure, never a skip.
pub fn postgres_base_url() -> String {
    std::env::var("DOCKHAND_TEST_PG").unwrap_or_else(|_| {
        panic!("DOCKHAND_TEST_PG is not set: run the tests with ./scripts/test, which installs and starts PostgreSQL")
    })
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_postgres_database(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = postgres_base_url();
    let db = format!(
        "dht_{}_{}_{}",
        name.chars().take(30).collect::<String>(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let admin = PostgresStore::connect_with(&base, 1)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DOCKHAND_TEST_PG is not reachable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(admin.pool())
        .await
        .unwrap_or_else(|e| panic!("create database {db}: {e}"));
    admin.pool().close().await;
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("DOCKHAND_TEST_PG must end in /DATABASE"),
    }
}

pub async fn postgres_store(name: &str) -> (AnyStore, Guard) {
    let url = fresh_postgres_database(name).await;
    let store = PostgresStore::connect_with(&url, 3).await.expect("connect");
    store.migrate().await.expect("migrate postgres");
    (AnyStore::Postgres(store), Guard::None)
}
