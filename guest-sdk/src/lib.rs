//! Write reactors in ordinary Rust.
//!
//! A reactor is an actor whose entire state lives in its WebAssembly linear
//! memory. You write a plain Rust type (collections, strings, anything) and a
//! handler for typed messages; this SDK provides the Wasm entry points, the
//! message encoding, and the calls to the host:
//!
//! ```ignore
//! use guest_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Counter { n: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Msg { Add(u64), Get }
//!
//! impl Reactor for Counter {
//!     type Msg = Msg;
//!     fn react(&mut self, cx: &mut Context, msg: Msg) {
//!         match msg {
//!             Msg::Add(k) => self.n += k,
//!             Msg::Get => { let _ = cx.reply(&self.n); }
//!         }
//!     }
//! }
//! guest_sdk::export!(Counter);
//! ```
//!
//! # Layout
//! - [`abi`] — the host/guest contract (names, signatures, layouts, version);
//!   `no_std`, compiled by the host too.
//! - on `wasm32` only: [`Reactor`], [`Context`], [`Payload`], [`export!`] and
//!   the runtime behind them; `encoding` (with the default `text` feature):
//!   `Json<T>`, the encoding for message types postcard cannot decode
//!   (`serde_json::Value`, untagged enums).
#![no_std]
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]

pub mod abi;

#[cfg(any(target_arch = "wasm32", test))]
extern crate alloc;
#[cfg(all(any(target_arch = "wasm32", test), feature = "text"))]
pub mod encoding;
#[cfg(all(target_arch = "wasm32", feature = "text"))]
pub use encoding::Json;
#[cfg(target_arch = "wasm32")]
extern crate std;

#[cfg(target_arch = "wasm32")]
mod guest;
#[cfg(target_arch = "wasm32")]
pub use guest::*;
