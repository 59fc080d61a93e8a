pub use dockhand;
