//! Rewrites a module at load time so the host can snapshot all of its state.
//!
//! A reactor's state is its linear memory plus its mutable globals. The host
//! can read and write memory through the instance, but wasmtime has no API to
//! read or write a global the module does not export — and every Rust
//! `wasm32-wasip1` cdylib has one such global, `__stack_pointer`. So before a
//! module is compiled, [`instrument`] adds an export `__reactor_global.<index>`
//! for each mutable global the module defines and does not already export.
//! This is the technique wizer uses for the same reason. Nothing else changes:
//! every other section (custom sections included: `name`, `reactor.abi`,
//! `producers`, debug info) is copied byte for byte in its original place, and
//! no function or global index moves.
//!
//! While rewriting, the module is also checked for state that memory and
//! globals alone cannot capture: instructions that change tables or drop
//! segments, GC objects mutated in place, mutable globals of reference type,
//! imported mutable globals, and more than one (or a shared) memory. Such a
//! module still loads and runs; its [`Instrumented::snapshot_blocker`] says
//! why snapshots of it are refused.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use wasm_encoder::Encode;
use wasmparser::{Encoding, ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// What snapshots need to know about a module, found while rewriting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Instrumented {
    /// The module to compile: the input with every defined mutable global exported.
    pub(crate) bytes: Vec<u8>,
    /// Every mutable global the module defines, in index order.
    pub(crate) globals: Vec<GlobalSlot>,
    /// Why this module's state cannot be captured by memory + globals alone
    /// (None: it can). Snapshots of such a module are refused with this text.
    pub(crate) snapshot_blocker: Option<String>,
}

/// One mutable global a snapshot saves and restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GlobalSlot {
    /// Index in the module's global index space (imports first).
    pub(crate) index: u32,
    /// The export name the host reads and writes it by.
    pub(crate) export: String,
    /// Its value type.
    pub(crate) ty: GlobalType,
}

/// The value type of a capturable global (reference types are not capturable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GlobalType {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `v128`.
    V128,
}

/// Name prefix of the exports added by the rewrite: `__reactor_global.<index>`.
///
/// Should the module already export something else under that exact name, the
/// added export is `__reactor_global.<index>.<n>` with the smallest free `n`;
/// [`GlobalSlot::export`] always holds the name actually used.
pub(crate) const GLOBAL_EXPORT_PREFIX: &str = "__reactor_global.";

/// Section id of the export section.
const EXPORT_SECTION_ID: u8 = 7;

/// Validates `bytes` as a core module, exports every defined mutable global it
/// does not already export, and reports what snapshots of it need to know.
///
/// Errors (with wasmparser's message) if the bytes are not a valid core
/// WebAssembly module; never panics, whatever the input.
pub(crate) fn instrument(bytes: &[u8]) -> Result<Instrumented, String> {
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default())
        .validate_all(bytes)
        .map_err(|e| e.to_string())?;
    let scan = Scan::of(bytes)?;

    let mut taken: HashSet<String> = scan.export_names.iter().map(|&n| n.to_owned()).collect();
    let mut globals = Vec::with_capacity(scan.mutable_globals.len());
    let mut added: Vec<(String, u32)> = Vec::new();
    for &(index, ty) in &scan.mutable_globals {
        let export = match scan.global_exports.get(&index) {
            Some(name) => (*name).to_owned(),
            None => {
                let name = free_name(&taken, index);
                taken.insert(name.clone());
                added.push((name.clone(), index));
                name
            }
        };
        globals.push(GlobalSlot { index, export, ty });
    }

    let bytes = if added.is_empty() {
        bytes.to_vec()
    } else {
        rewrite(bytes, &scan, &added)?
    };
    Ok(Instrumented {
        bytes,
        globals,
        snapshot_blocker: scan.blocker,
    })
}

/// The export name for defined global `index`: the prefix plus the index, with
/// a `.<n>` suffix when the module already uses that name for something else.
fn free_name(taken: &HashSet<String>, index: u32) -> String {
    let base = format!("{GLOBAL_EXPORT_PREFIX}{index}");
    if !taken.contains(base.as_str()) {
        return base;
    }
    (1u64..)
        .map(|n| format!("{base}.{n}"))
        .find(|name| !taken.contains(name.as_str()))
        .unwrap_or(base)
}

/// One section of the input, as found.
#[derive(Debug)]
struct Section {
    /// Section id (0 for custom sections).
    id: u8,
    /// Its contents (after the id and size) in the input.
    range: Range<usize>,
}

/// Everything [`instrument`] learns from one pass over a valid module.
#[derive(Debug, Default)]
struct Scan<'a> {
    /// Every section, in order.
    sections: Vec<Section>,
    /// Position in `sections` of the export section, if any.
    export_section: Option<usize>,
    /// Position in `sections` where a new export section goes: after the last
    /// section that must precede it.
    export_insert_at: usize,
    /// Defined mutable globals of capturable type: (index, type), in order.
    mutable_globals: Vec<(u32, GlobalType)>,
    /// The first export name of each exported global.
    global_exports: HashMap<u32, &'a str>,
    /// Every export name.
    export_names: Vec<&'a str>,
    /// The first reason snapshots cannot capture this module.
    blocker: Option<String>,
}

impl<'a> Scan<'a> {
    /// Walks `bytes`, which the validator has accepted.
    fn of(bytes: &'a [u8]) -> Result<Self, String> {
        let mut scan = Scan::default();
        let mut imported_funcs = 0u32;
        let mut imported_globals = 0u32;
        let mut memories = 0u32;
        let mut code_entries = 0u32;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| e.to_string())?;
            let section = match &payload {
                Payload::Version {
                    encoding: Encoding::Component,
                    ..
                } => {
                    return Err("this is a WebAssembly component, not a core module".to_owned());
                }
                Payload::Version { .. } | Payload::End(_) => None,
                Payload::TypeSection(r) => Some((1, r.range())),
                Payload::ImportSection(r) => Some((2, r.range())),
                Payload::FunctionSection(r) => Some((3, r.range())),
                Payload::TableSection(r) => Some((4, r.range())),
                Payload::MemorySection(r) => Some((5, r.range())),
                Payload::GlobalSection(r) => Some((6, r.range())),
                Payload::ExportSection(r) => Some((EXPORT_SECTION_ID, r.range())),
                Payload::StartSection { range, .. } => Some((8, range.clone())),
                Payload::ElementSection(r) => Some((9, r.range())),
                Payload::CodeSectionStart { range, .. } => Some((10, range.clone())),
                Payload::DataSection(r) => Some((11, r.range())),
                Payload::DataCountSection { range, .. } => Some((12, range.clone())),
                Payload::TagSection(r) => Some((13, r.range())),
                Payload::CustomSection(r) => Some((0, r.range())),
                Payload::UnknownSection { id, range, .. } => Some((*id, range.clone())),
                Payload::CodeSectionEntry(_) => None,
                _ => return Err("unexpected component section in a core module".to_owned()),
            };
            if let Some((id, range)) = section {
                if id == EXPORT_SECTION_ID {
                    scan.export_section = Some(scan.sections.len());
                }
                scan.sections.push(Section { id, range });
                if precedes_exports(id) {
                    scan.export_insert_at = scan.sections.len();
                }
            }

            match payload {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(|e| e.to_string())?;
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_funcs += 1,
                            TypeRef::Global(ty) => {
                                if ty.mutable {
                                    scan.block(format!(
                                        "global {imported_globals} is an imported mutable global \
                                         (`{}::{}`): its value belongs to the importer and \
                                         snapshots capture only memory and the module's own globals",
                                        import.module.escape_debug(),
                                        import.name.escape_debug()
                                    ));
                                }
                                imported_globals += 1;
                            }
                            TypeRef::Memory(ty) => {
                                scan.check_memory(memories, ty.shared);
                                memories += 1;
                            }
                            TypeRef::Table(_) | TypeRef::Tag(_) => {}
                        }
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory.map_err(|e| e.to_string())?;
                        scan.check_memory(memories, memory.shared);
                        memories += 1;
                    }
                }
                Payload::GlobalSection(reader) => {
                    for (i, global) in reader.into_iter().enumerate() {
                        let global = global.map_err(|e| e.to_string())?;
                        let index = imported_globals.saturating_add(i as u32);
                        if !global.ty.mutable {
                            continue;
                        }
                        let ty = match global.ty.content_type {
                            ValType::I32 => GlobalType::I32,
                            ValType::I64 => GlobalType::I64,
                            ValType::F32 => GlobalType::F32,
                            ValType::F64 => GlobalType::F64,
                            ValType::V128 => GlobalType::V128,
                            ValType::Ref(r) => {
                                scan.block(format!(
                                    "global {index} is a mutable `{r}` global: references \
                                     cannot be saved, and snapshots capture only memory and \
                                     numeric globals"
                                ));
                                continue;
                            }
                        };
                        scan.mutable_globals.push((index, ty));
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(|e| e.to_string())?;
                        scan.export_names.push(export.name);
                        if export.kind == ExternalKind::Global {
                            scan.global_exports
                                .entry(export.index)
                                .or_insert(export.name);
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let func = imported_funcs.saturating_add(code_entries);
                    code_entries = code_entries.saturating_add(1);
                    if scan.blocker.is_some() {
                        continue;
                    }
                    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                    while !ops.eof() {
                        let op = ops.read().map_err(|e| e.to_string())?;
                        if let Some((name, what)) = mutating(&op) {
                            scan.block(format!(
                                "function {func} uses `{name}`: {what} would change at run \
                                 time and snapshots capture only memory and globals"
                            ));
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(scan)
    }

    /// Records `why` unless a blocker was already found.
    fn block(&mut self, why: String) {
        if self.blocker.is_none() {
            self.blocker = Some(why);
        }
    }

    /// Blocks snapshots of a second memory (`index` > 0) or a shared one.
    fn check_memory(&mut self, index: u32, shared: bool) {
        if index == 1 {
            self.block(
                "the module has more than one memory: snapshots capture only one".to_owned(),
            );
        }
        if shared {
            self.block(format!(
                "memory {index} is shared: other threads could change it while a snapshot is taken"
            ));
        }
    }
}

/// Whether a section with this id must come before the export section (so a
/// new export section goes after it).
fn precedes_exports(id: u8) -> bool {
    // type, import, function, table, memory, global, and tag (which sits
    // between memory and global).
    matches!(id, 1..=6 | 13)
}

/// The text name of an instruction that changes state outside memory and
/// globals, with what it changes; `None` for every other instruction.
fn mutating(op: &Operator<'_>) -> Option<(&'static str, &'static str)> {
    const TABLES: &str = "tables";
    Some(match op {
        Operator::TableSet { .. } => ("table.set", TABLES),
        Operator::TableGrow { .. } => ("table.grow", TABLES),
        Operator::TableFill { .. } => ("table.fill", TABLES),
        Operator::TableCopy { .. } => ("table.copy", TABLES),
        Operator::TableInit { .. } => ("table.init", TABLES),
        Operator::ElemDrop { .. } => ("elem.drop", "element segments"),
        Operator::DataDrop { .. } => ("data.drop", "data segments"),
        Operator::StructSet { .. } => ("struct.set", "GC objects"),
        Operator::ArraySet { .. } => ("array.set", "GC objects"),
        Operator::ArrayFill { .. } => ("array.fill", "GC objects"),
        Operator::ArrayCopy { .. } => ("array.copy", "GC objects"),
        Operator::ArrayInitData { .. } => ("array.init_data", "GC objects"),
        Operator::ArrayInitElem { .. } => ("array.init_elem", "GC objects"),
        _ => return None,
    })
}

/// Re-emits `bytes` with `added` exports (name, global index): every section
/// copied as is, except the export section, which gets the new entries
/// appended (or is created, right after the sections that must precede it).
fn rewrite(bytes: &[u8], scan: &Scan<'_>, added: &[(String, u32)]) -> Result<Vec<u8>, String> {
    let exports = export_section(bytes, scan, added)?;
    let exports = wasm_encoder::RawSection {
        id: EXPORT_SECTION_ID,
        data: &exports,
    };
    let mut module = wasm_encoder::Module::new();
    for (i, section) in scan.sections.iter().enumerate() {
        if scan.export_section.is_none() && i == scan.export_insert_at {
            module.section(&exports);
        }
        if scan.export_section == Some(i) {
            module.section(&exports);
            continue;
        }
        let data = bytes
            .get(section.range.clone())
            .ok_or("section range out of bounds")?;
        module.section(&wasm_encoder::RawSection {
            id: section.id,
            data,
        });
    }
    if scan.export_section.is_none() && scan.export_insert_at == scan.sections.len() {
        module.section(&exports);
    }
    Ok(module.finish())
}

/// The contents of the new export section: the original entries, byte for
/// byte, then one global export per `added` entry, under an updated count.
fn export_section(
    bytes: &[u8],
    scan: &Scan<'_>,
    added: &[(String, u32)],
) -> Result<Vec<u8>, String> {
    let (count, entries): (u32, &[u8]) = match scan.export_section {
        Some(i) => {
            let range = scan
                .sections
                .get(i)
                .ok_or("export section missing")?
                .range
                .clone();
            let data = bytes
                .get(range.clone())
                .ok_or("export section out of bounds")?;
            let mut reader = wasmparser::BinaryReader::new(data, range.start);
            let count = reader.read_var_u32().map_err(|e| e.to_string())?;
            let entries = data
                .get(reader.current_position()..)
                .ok_or("export section truncated")?;
            (count, entries)
        }
        None => (0, &[]),
    };
    let added_count = u32::try_from(added.len()).map_err(|_| "too many globals")?;
    let total = count.checked_add(added_count).ok_or("too many exports")?;
    let mut out = Vec::with_capacity(entries.len() + added.len() * 24 + 5);
    total.encode(&mut out);
    out.extend_from_slice(entries);
    for (name, index) in added {
        name.as_str().encode(&mut out);
        wasm_encoder::ExportKind::Global.encode(&mut out);
        index.encode(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;
    use wasmparser::{KnownCustom, Name};

    /// Validates a module with the same features as [`instrument`].
    fn validate(bytes: &[u8]) -> Result<(), String> {
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default())
            .validate_all(bytes)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Parses WAT and instruments it.
    fn run(wat: &str) -> Instrumented {
        let input = wat::parse_str(wat).expect("test WAT parses");
        let out = instrument(&input).expect("instrument accepts the module");
        validate(&out.bytes).expect("instrumented module validates");
        out
    }

    /// The blocker a module gets (it must get one).
    fn blocker(wat: &str) -> String {
        run(wat).snapshot_blocker.expect("a snapshot blocker")
    }

    /// Section ids, in order.
    fn section_ids(bytes: &[u8]) -> Vec<u8> {
        let mut ids = Vec::new();
        for payload in Parser::new(0).parse_all(bytes) {
            let id = match payload.expect("parses") {
                Payload::TypeSection(_) => 1,
                Payload::ImportSection(_) => 2,
                Payload::FunctionSection(_) => 3,
                Payload::TableSection(_) => 4,
                Payload::MemorySection(_) => 5,
                Payload::GlobalSection(_) => 6,
                Payload::ExportSection(_) => 7,
                Payload::StartSection { .. } => 8,
                Payload::ElementSection(_) => 9,
                Payload::CodeSectionStart { .. } => 10,
                Payload::DataSection(_) => 11,
                Payload::DataCountSection { .. } => 12,
                Payload::TagSection(_) => 13,
                Payload::CustomSection(_) => 0,
                _ => continue,
            };
            ids.push(id);
        }
        ids
    }

    /// Custom sections (name, contents), in order.
    fn customs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        Parser::new(0)
            .parse_all(bytes)
            .filter_map(|p| match p.expect("parses") {
                Payload::CustomSection(r) => Some((r.name().to_owned(), r.data().to_vec())),
                _ => None,
            })
            .collect()
    }

    /// Every export: (name, kind, index), in order.
    fn exports(bytes: &[u8]) -> Vec<(String, ExternalKind, u32)> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(bytes) {
            if let Payload::ExportSection(r) = payload.expect("parses") {
                for e in r {
                    let e = e.expect("export parses");
                    out.push((e.name.to_owned(), e.kind, e.index));
                }
            }
        }
        out
    }

    /// Function and global counts (imports included), and the defined
    /// mutable globals of numeric type as (index, type), and whether a
    /// defined mutable global of reference type exists.
    fn inventory(bytes: &[u8]) -> (u32, u32, Vec<(u32, GlobalType)>, bool) {
        let (mut funcs, mut globals, mut mutable, mut mutable_ref) = (0, 0, Vec::new(), false);
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.expect("parses") {
                Payload::ImportSection(r) => {
                    for i in r.into_imports() {
                        match i.expect("import parses").ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => funcs += 1,
                            TypeRef::Global(_) => globals += 1,
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(r) => funcs += r.count(),
                Payload::GlobalSection(r) => {
                    for g in r {
                        let g = g.expect("global parses");
                        if g.ty.mutable {
                            let ty = match g.ty.content_type {
                                ValType::I32 => Some(GlobalType::I32),
                                ValType::I64 => Some(GlobalType::I64),
                                ValType::F32 => Some(GlobalType::F32),
                                ValType::F64 => Some(GlobalType::F64),
                                ValType::V128 => Some(GlobalType::V128),
                                ValType::Ref(_) => None,
                            };
                            match ty {
                                Some(ty) => mutable.push((globals, ty)),
                                None => mutable_ref = true,
                            }
                        }
                        globals += 1;
                    }
                }
                _ => {}
            }
        }
        (funcs, globals, mutable, mutable_ref)
    }

    /// Checks the invariants every successful rewrite keeps.
    fn check_invariants(input: &[u8], out: &Instrumented) {
        validate(&out.bytes).expect("instrumented module validates");
        let (funcs, globals, mutable, mutable_ref) = inventory(input);
        let (out_funcs, out_globals, _, _) = inventory(&out.bytes);
        assert_eq!(
            (funcs, globals),
            (out_funcs, out_globals),
            "index spaces unchanged"
        );
        let slots: Vec<_> = out.globals.iter().map(|s| (s.index, s.ty)).collect();
        assert_eq!(
            slots, mutable,
            "every defined mutable numeric global, in order"
        );
        let out_exports = exports(&out.bytes);
        for slot in &out.globals {
            let found: Vec<_> = out_exports
                .iter()
                .filter(|(n, _, _)| *n == slot.export)
                .collect();
            assert_eq!(found.len(), 1, "export {} is unique", slot.export);
            assert_eq!((found[0].1, found[0].2), (ExternalKind::Global, slot.index));
        }
        let in_exports = exports(input);
        assert_eq!(
            out_exports[..in_exports.len()],
            in_exports[..],
            "original exports kept"
        );
        assert_eq!(
            customs(input),
            customs(&out.bytes),
            "custom sections kept in order"
        );
        if out_exports.len() == in_exports.len() {
            assert_eq!(out.bytes, input, "nothing to add: bytes unchanged");
        }
        if mutable_ref {
            assert!(
                out.snapshot_blocker.is_some(),
                "mutable reference global blocks snapshots"
            );
        }
    }

    const MIXED: &str = r#"
        (module
          (global $hidden (mut i32) (i32.const 7))
          (global $shown (export "counter64") (mut i64) (i64.const 1))
          (global $fixed i32 (i32.const 42))
          (@custom "reactor.abi" (after global) "\01\00\00\00")
          (func $bump (export "bump")
            (global.set $hidden (i32.add (global.get $hidden) (i32.const 5))))
          (func $hidden (export "hidden") (result i32) (global.get $hidden))
          (func $fixed (export "fixed") (result i32) (global.get $fixed)))
    "#;

    #[test]
    fn exports_hidden_mutable_globals_and_keeps_everything_else() {
        let input = wat::parse_str(MIXED).unwrap();
        let out = instrument(&input).unwrap();
        check_invariants(&input, &out);
        assert_eq!(out.snapshot_blocker, None);
        assert_eq!(
            out.globals,
            vec![
                GlobalSlot {
                    index: 0,
                    export: "__reactor_global.0".into(),
                    ty: GlobalType::I32
                },
                GlobalSlot {
                    index: 1,
                    export: "counter64".into(),
                    ty: GlobalType::I64
                },
            ]
        );
        let names: Vec<_> = exports(&out.bytes).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(
            names,
            ["counter64", "bump", "hidden", "fixed", "__reactor_global.0"]
        );
        assert!(
            !names.iter().any(|n| n == "__reactor_global.2"),
            "immutable global not exported"
        );
        let custom = customs(&out.bytes);
        assert_eq!(
            custom.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["reactor.abi", "name"]
        );
        assert_eq!(custom[0].1, [1, 0, 0, 0]);
        assert_eq!(
            section_ids(&out.bytes),
            section_ids(&input),
            "sections stay in place"
        );
        // The name section, byte for byte.
        let name = &customs(&input)
            .into_iter()
            .find(|(n, _)| n == "name")
            .unwrap()
            .1;
        assert!(out.bytes.windows(name.len()).any(|w| w == &name[..]));

        // The host can now read and write the hidden global.
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &out.bytes).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Linker::new(&engine)
            .instantiate(&mut store, &module)
            .unwrap();
        let bump = instance
            .get_typed_func::<(), ()>(&mut store, "bump")
            .unwrap();
        let hidden = instance
            .get_typed_func::<(), i32>(&mut store, "hidden")
            .unwrap();
        bump.call(&mut store, ()).unwrap();
        let global = instance
            .get_global(&mut store, "__reactor_global.0")
            .unwrap();
        assert_eq!(global.get(&mut store).i32(), Some(12));
        global.set(&mut store, wasmtime::Val::I32(100)).unwrap();
        assert_eq!(hidden.call(&mut store, ()).unwrap(), 100);
        bump.call(&mut store, ()).unwrap();
        assert_eq!(global.get(&mut store).i32(), Some(105));
        let shown = instance.get_global(&mut store, "counter64").unwrap();
        assert_eq!(shown.get(&mut store).i64(), Some(1));
    }

    #[test]
    fn creates_the_export_section_in_the_right_place() {
        let wat = r#"
            (module
              (import "env" "base" (global $base i32))
              (memory 1)
              (global $sp (mut i32) (global.get $base))
              (global $f (mut f64) (f64.const 1.5))
              (global $v (mut v128) (v128.const i64x2 1 2))
              (@custom "between" (after global) "x")
              (start $init)
              (func $init (global.set $sp (i32.const 1024)))
              (data (i32.const 0) "hi")
              (@custom "producers-like" (after data) "y"))
        "#;
        let input = wat::parse_str(wat).unwrap();
        let out = instrument(&input).unwrap();
        check_invariants(&input, &out);
        assert_eq!(out.snapshot_blocker, None);
        let slots: Vec<_> = out
            .globals
            .iter()
            .map(|s| (s.index, s.export.as_str(), s.ty))
            .collect();
        assert_eq!(
            slots,
            [
                (1, "__reactor_global.1", GlobalType::I32),
                (2, "__reactor_global.2", GlobalType::F64),
                (3, "__reactor_global.3", GlobalType::V128),
            ]
        );
        let mut expected = section_ids(&input);
        let after_global = expected.iter().position(|&id| id == 6).unwrap() + 1;
        expected.insert(after_global, 7);
        assert_eq!(section_ids(&out.bytes), expected);
    }

    #[test]
    fn avoids_export_names_already_taken() {
        let wat = r#"
            (module
              (global (mut i32) (i32.const 0))
              (func (export "__reactor_global.0"))
              (func (export "__reactor_global.0.1")))
        "#;
        let out = run(wat);
        assert_eq!(out.globals[0].export, "__reactor_global.0.2");
        check_invariants(&wat::parse_str(wat).unwrap(), &out);
    }

    #[test]
    fn a_global_exported_twice_keeps_its_first_name() {
        let wat = r#"
            (module
              (global (export "a") (export "b") (mut i32) (i32.const 0)))
        "#;
        let input = wat::parse_str(wat).unwrap();
        let out = instrument(&input).unwrap();
        assert_eq!(out.globals[0].export, "a");
        assert_eq!(out.bytes, input, "nothing added");
    }

    #[test]
    fn nothing_to_add_leaves_the_bytes_alone() {
        let wat = r#"(module (global i32 (i32.const 1)) (func (export "f")))"#;
        let input = wat::parse_str(wat).unwrap();
        let out = instrument(&input).unwrap();
        assert_eq!(
            out,
            Instrumented {
                bytes: input,
                globals: vec![],
                snapshot_blocker: None
            }
        );
    }

    #[test]
    fn table_and_segment_changes_block_snapshots() {
        let cases = [
            ("table.set", "(table.set $t (i32.const 0) (ref.null func))"),
            (
                "table.grow",
                "(drop (table.grow $t (ref.null func) (i32.const 1)))",
            ),
            (
                "table.fill",
                "(table.fill $t (i32.const 0) (ref.null func) (i32.const 1))",
            ),
            (
                "table.copy",
                "(table.copy $t $t (i32.const 0) (i32.const 1) (i32.const 1))",
            ),
            (
                "table.init",
                "(table.init $t $passive (i32.const 0) (i32.const 0) (i32.const 1))",
            ),
            ("elem.drop", "(elem.drop $passive)"),
            ("data.drop", "(data.drop $bytes)"),
        ];
        for (name, body) in cases {
            let wat = format!(
                r#"(module
                     (import "env" "f" (func $imported))
                     (memory 1)
                     (table $t 2 funcref)
                     (elem $passive func $imported)
                     (data $bytes "abc")
                     (func $quiet (call $imported))
                     (func $culprit {body}))"#
            );
            let why = blocker(&wat);
            assert!(why.contains(&format!("`{name}`")), "{name}: {why}");
            assert!(why.starts_with("function 2 uses"), "{name}: {why}");
        }
    }

    #[test]
    fn gc_mutation_blocks_snapshots() {
        let why = blocker(
            r#"(module
                 (type $cell (struct (field (mut i32))))
                 (global $g (ref $cell) (struct.new $cell (i32.const 0)))
                 (func (struct.set $cell 0 (global.get $g) (i32.const 1))))"#,
        );
        assert!(why.contains("`struct.set`"), "{why}");
    }

    #[test]
    fn memories_and_globals_the_host_cannot_capture_block_snapshots() {
        let why = blocker("(module (memory 1) (memory 1))");
        assert!(why.contains("more than one memory"), "{why}");
        let why = blocker(r#"(module (import "env" "m" (memory 1)) (memory 1))"#);
        assert!(why.contains("more than one memory"), "{why}");
        let why = blocker("(module (memory 1 1 shared))");
        assert!(why.contains("shared"), "{why}");
        let why = blocker(
            "(module (func $f) (global (mut funcref) (ref.func $f)) (elem declare func $f))",
        );
        assert!(why.contains("global 0") && why.contains("funcref"), "{why}");
        let why = blocker("(module (global (mut externref) (ref.null extern)))");
        assert!(why.contains("externref"), "{why}");
        let why = blocker(r#"(module (import "env" "g" (global (mut i32))))"#);
        assert!(
            why.contains("imported mutable global") && why.contains("env::g"),
            "{why}"
        );
    }

    #[test]
    fn the_first_blocker_is_reported() {
        let why = blocker(
            r#"(module
                 (import "env" "g" (global (mut i64)))
                 (table 1 funcref)
                 (func (table.set 0 (i32.const 0) (ref.null func))))"#,
        );
        assert!(why.contains("imported mutable global"), "{why}");
    }

    #[test]
    fn read_only_tables_and_segments_do_not_block() {
        let out = run(r#"(module
                 (type $t (func (result i32)))
                 (memory 1)
                 (table (export "table") 2 funcref)
                 (elem (i32.const 0) $a $b)
                 (data $passive "xyz")
                 (global (mut i32) (i32.const 0))
                 (func $a (result i32) (i32.const 1))
                 (func $b (result i32) (i32.const 2))
                 (func (export "pick") (param i32) (result i32)
                   (memory.init $passive (i32.const 0) (i32.const 0) (i32.const 3))
                   (drop (memory.grow (i32.const 1)))
                   (call_indirect (type $t) (local.get 0))))"#);
        assert_eq!(out.snapshot_blocker, None);
        assert_eq!(out.globals.len(), 1);
    }

    #[test]
    fn rejects_what_is_not_a_valid_core_module() {
        assert!(instrument(b"").is_err());
        assert!(instrument(b"\0asm").is_err());
        assert!(instrument(b"not wasm at all").is_err());
        let invalid = wat::parse_str("(module (func (result i32) (i64.const 0)))").unwrap();
        let err = instrument(&invalid).unwrap_err();
        assert!(err.contains("type mismatch"), "{err}");
        let component = wat::parse_str("(component)").unwrap();
        assert!(instrument(&component).is_err());
        let component =
            wat::parse_str("(component (core module (global (mut i32) (i32.const 0))))").unwrap();
        assert!(instrument(&component).is_err());
    }

    /// The built guest reactors.
    fn guest(name: &str) -> &'static [u8] {
        static GUESTS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
        let all = GUESTS.get_or_init(|| {
            ["counter", "kv", "pingpong", "faulty"]
                .iter()
                .map(|g| {
                    let path = example_guests::path(g);
                    (g.to_string(), std::fs::read(&path).expect("guest is built"))
                })
                .collect()
        });
        &all.iter().find(|(n, _)| n == name).expect("known guest").1
    }

    /// The index of the global the name section calls `name`.
    fn named_global(bytes: &[u8], name: &str) -> Option<u32> {
        for payload in Parser::new(0).parse_all(bytes) {
            if let Payload::CustomSection(r) = payload.ok()?
                && let KnownCustom::Name(names) = r.as_known()
            {
                for map in names.into_iter().filter_map(|n| match n {
                    Ok(Name::Global(map)) => Some(map),
                    _ => None,
                }) {
                    if let Some(naming) = map.into_iter().flatten().find(|n| n.name == name) {
                        return Some(naming.index);
                    }
                }
            }
        }
        None
    }

    #[test]
    fn real_guests_expose_their_stack_pointer() {
        for name in ["counter", "kv", "pingpong", "faulty"] {
            let input = guest(name);
            let out = instrument(input).unwrap_or_else(|e| panic!("{name}: {e}"));
            check_invariants(input, &out);
            assert_eq!(out.snapshot_blocker, None, "{name}");
            assert_eq!(out.globals.len(), 1, "{name}: {:?}", out.globals);
            let slot = &out.globals[0];
            assert_eq!(slot.ty, GlobalType::I32, "{name}");
            if let Some(sp) = named_global(input, "__stack_pointer") {
                assert_eq!(slot.index, sp, "{name}");
            }

            // The stack pointer is readable once instantiated.
            let engine = wasmtime::Engine::default();
            let module = wasmtime::Module::new(&engine, &out.bytes).unwrap();
            let mut store = wasmtime::Store::new(&engine, ());
            let mut linker = wasmtime::Linker::new(&engine);
            linker.define_unknown_imports_as_traps(&module).unwrap();
            let instance = linker.instantiate(&mut store, &module).unwrap();
            let sp = instance.get_global(&mut store, &slot.export).unwrap();
            let value = sp.get(&mut store).i32().unwrap();
            assert!(
                value > 0 && value % 16 == 0,
                "{name}: stack pointer {value}"
            );
        }
    }

    /// Runs `instrument` and, when it accepts the input, checks the invariants.
    fn never_panics(bytes: &[u8]) {
        if let Ok(out) = instrument(bytes) {
            check_invariants(bytes, &out);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            never_panics(&bytes);
            let mut with_header = b"\0asm\x01\0\0\0".to_vec();
            with_header.extend_from_slice(&bytes);
            never_panics(&with_header);
        }

        #[test]
        fn mutated_guests_never_panic(
            which in 0usize..4,
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let input = guest(["counter", "kv", "pingpong", "faulty"][which]);
            let mut mutated = input.to_vec();
            let i = at.index(mutated.len());
            mutated[i] = byte;
            never_panics(&mutated);
        }

        #[test]
        fn truncated_guests_never_panic(which in 0usize..4, at in any::<proptest::sample::Index>()) {
            let input = guest(["counter", "kv", "pingpong", "faulty"][which]);
            never_panics(&input[..at.index(input.len())]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn generated_modules_keep_their_invariants(seed in proptest::collection::vec(any::<u8>(), 64..4096)) {
            let config = wasm_smith::Config {
                min_globals: 1,
                max_globals: 20,
                max_imports: 8,
                ..wasm_smith::Config::default()
            };
            let mut u = arbitrary::Unstructured::new(&seed);
            let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
                return Ok(());
            };
            let input = module.to_bytes();
            let out = instrument(&input).unwrap_or_else(|e| panic!("wasm-smith module rejected: {e}"));
            check_invariants(&input, &out);
        }
    }
}
