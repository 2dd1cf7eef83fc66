//! Checks that a module is a reactor for this host before and after compiling
//! it, so a bad module gets an error that says exactly what is wrong.

#![forbid(unsafe_code)]

use guest_sdk::abi;
use std::path::PathBuf;
use wasmtime::{ExternType, Module, ValType};

/// Why a module was not loaded. Loading has no side effects on failure:
/// nothing is cached, no reactor is affected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read module file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// A WebAssembly component, not a core module.
    #[error("this is a WebAssembly component; reactors are core modules built for wasm32-wasip1")]
    Component,
    /// The module failed to parse, validate or compile.
    #[error("malformed WebAssembly module: {0}")]
    Malformed(String),
    /// The module has no ABI version section.
    #[error(
        "not a reactor module: no `{section}` custom section (build it with guest-sdk and `guest_sdk::export!`)",
        section = abi::ABI_SECTION
    )]
    NoAbiSection,
    /// The ABI section is not 4 bytes.
    #[error("the `{section}` section is malformed: expected 4 bytes, found {0}", section = abi::ABI_SECTION)]
    BadAbiSection(usize),
    /// The module speaks another ABI version.
    #[error("module speaks reactor ABI version {found}, this host speaks version {expected}; rebuild it against this guest-sdk")]
    AbiVersion {
        /// The module's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// A required export is missing.
    #[error("not a reactor module: it does not export `{0}`")]
    MissingExport(&'static str),
    /// An export has the wrong type.
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    BadExport {
        /// Export name.
        name: &'static str,
        /// What the ABI requires.
        expected: &'static str,
        /// What the module has.
        found: String,
    },
    /// An import this host does not provide, or provides with another type.
    #[error("module imports `{module}::{name}`, which this host does not provide with that type ({detail})")]
    Import {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// wasmtime's explanation.
        detail: String,
    },
    /// The module has a start function: it would run inside instantiation,
    /// before the reactor has an address, a memory or a shard to call.
    #[error(
        "the module has a start function (function {0}); reactors do their start-up in `{init}`, \
         which the host calls once the reactor exists",
        init = abi::EXPORT_INIT
    )]
    StartFunction(u32),
    /// More than one linear memory: a reactor's state, its budget and its
    /// snapshots are one memory.
    #[error("the module has {0} memories (defined and imported); a reactor has exactly one")]
    Memories(u32),
    /// The on-disk cache directory is unusable.
    #[error("module cache at {path}: {reason}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The engine could not be configured (a host bug or platform problem).
    #[error("engine setup failed: {0}")]
    Engine(String),
}

const MAGIC: &[u8; 4] = b"\0asm";

/// Checks the header and the ABI section, before compiling anything.
pub(crate) fn check_bytes(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(LoadError::NotWasm(format!(
            "expected the magic bytes 00 61 73 6d, found [{}] ({} bytes in all)",
            shown.join(" "),
            bytes.len()
        )));
    }
    match (bytes[4..6] == [1, 0], bytes[6..8] == [0, 0]) {
        (true, true) => {}
        _ if bytes[6..8] == [1, 0] => return Err(LoadError::Component),
        _ => {
            return Err(LoadError::Malformed(format!(
                "unsupported binary version {:02x?}",
                &bytes[4..8]
            )));
        }
    }
    let mut version = None;
    let mut memories = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| LoadError::Malformed(e.to_string()))?;
        match payload {
            wasmparser::Payload::CustomSection(reader) if reader.name() == abi::ABI_SECTION => {
                let data = reader.data();
                let arr: [u8; 4] = data.try_into().map_err(|_| LoadError::BadAbiSection(data.len()))?;
                version = Some(u32::from_le_bytes(arr));
            }
            wasmparser::Payload::StartSection { func, .. } => return Err(LoadError::StartFunction(func)),
            wasmparser::Payload::MemorySection(reader) => memories = memories.saturating_add(reader.count()),
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| LoadError::Malformed(e.to_string()))?;
                    if matches!(import.ty, wasmparser::TypeRef::Memory(_)) {
                        memories = memories.saturating_add(1);
                    }
                }
            }
            _ => {}
        }
    }
    if memories > 1 {
        return Err(LoadError::Memories(memories));
    }
    match version {
        None => Err(LoadError::NoAbiSection),
        Some(v) if v != abi::ABI_VERSION => Err(LoadError::AbiVersion { found: v, expected: abi::ABI_VERSION }),
        Some(_) => Ok(()),
    }
}

fn func_sig(ty: &ExternType) -> Option<(Vec<ValType>, Vec<ValType>)> {
    match ty {
        ExternType::Func(f) => Some((f.params().collect(), f.results().collect())),
        _ => None,
    }
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => format!("func {f}"),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

/// Checks the exports the ABI requires; returns whether `_initialize` exists.
pub(crate) fn check_exports(module: &Module) -> Result<bool, LoadError> {
    let export = |name: &'static str| module.get_export(name).ok_or(LoadError::MissingExport(name));
    match export(abi::EXPORT_MEMORY)? {
        ExternType::Memory(m) if !m.is_64() && !m.is_shared() => {}
        other => {
            return Err(LoadError::BadExport {
                name: abi::EXPORT_MEMORY,
                expected: "a 32-bit, unshared memory",
                found: describe(&other),
            });
        }
    }
    let want = |name: &'static str, params: &[ValType], expected: &'static str| -> Result<(), LoadError> {
        let ty = export(name)?;
        let ok = func_sig(&ty).is_some_and(|(p, r)| {
            p.len() == params.len()
                && p.iter().zip(params).all(|(a, b)| ValType::eq(a, b))
                && r.len() == 1
                && ValType::eq(&r[0], &ValType::I32)
        });
        if ok { Ok(()) } else { Err(LoadError::BadExport { name, expected, found: describe(&ty) }) }
    };
    want(abi::EXPORT_INIT, &[ValType::I32], "func (param i32) (result i32)")?;
    want(abi::EXPORT_RECEIVE, &[ValType::I32, ValType::I32], "func (param i32 i32) (result i32)")?;
    Ok(match module.get_export(abi::EXPORT_WASI_INITIALIZE) {
        None => false,
        Some(ty) => match func_sig(&ty) {
            Some((p, r)) if p.is_empty() && r.is_empty() => true,
            _ => {
                return Err(LoadError::BadExport {
                    name: abi::EXPORT_WASI_INITIALIZE,
                    expected: "func",
                    found: describe(&ty),
                });
            }
        },
    })
}

/// Turns a linking failure into the import that caused it.
pub(crate) fn link_error(module: &Module, err: wasmtime::Error) -> LoadError {
    let detail = format!("{err:#}");
    for import in module.imports() {
        if detail.contains(&format!("`{}::{}`", import.module(), import.name())) {
            return LoadError::Import { module: import.module().into(), name: import.name().into(), detail };
        }
    }
    LoadError::Malformed(format!("cannot link the module: {detail}"))
}
