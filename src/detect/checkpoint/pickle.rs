//! A pickle machine that builds a graph of values and runs nothing.
//!
//! Values live in one arena and refer to each other by index, so a memoized container that is
//! filled after it was memoized (`EMPTY_DICT BINPUT ... SETITEMS`, as every pickled module is)
//! is the same value wherever it is fetched again, as in Python, and fetching it copies
//! nothing. A global is only ever a name; `REDUCE`, `NEWOBJ` and `BUILD` record what Python
//! would call, after [`policy`] has said that Python would only build data with it.
//!
//! Bounds: the pickle's size (checked by the caller), [`MAX_VALUES`] values, [`MAX_MEMO`]
//! memo entries. Every length is checked against the bytes left before anything is allocated.

use std::collections::HashMap;

use super::policy::{self, Call, Global};

/// An index into the arena of a [`Pickle`].
pub type Id = usize;

/// The most values one pickle may build (a 300 KB ultralytics pickle builds about 120 000).
pub const MAX_VALUES: usize = 1 << 24;
/// The most distinct memo keys.
pub const MAX_MEMO: usize = 1 << 22;
/// The longest module or name line of a text `GLOBAL`.
const MAX_GLOBAL_LINE: usize = 1024;

/// Why a pickle was not read: it is malformed, or it asks for a call that is refused.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsafe(String),
}

#[derive(Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond `i64` (`LONG1`, `LONG4`): its little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Global),
    /// An allowed call or instance: `class(*args)` or `class.__new__(class, *args)`, with the
    /// state a `BUILD` gave it.
    Object(Object),
    /// `persistent_load(pid)`: in torch files, a reference to a storage in the zip.
    Persistent(Id),
}

impl Value {
    /// The Python type name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
            Value::Persistent(_) => "persistent id",
        }
    }
}

#[derive(Debug)]
pub struct Object {
    pub class: Global,
    pub args: Id,
    pub state: Option<Id>,
}

/// A parsed pickle: its values and the one it returned.
pub struct Pickle {
    values: Vec<Value>,
    root: Id,
}

const NONE: Value = Value::None;

impl Pickle {
    pub fn parse(data: &[u8]) -> Result<Pickle, Fault> {
        let mut machine = Machine {
            data,
            pos: 0,
            op_pos: 0,
            values: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        };
        while !machine.step()? {}
        let root = machine.pop()?;
        Ok(Pickle {
            values: machine.values,
            root,
        })
    }

    pub fn root(&self) -> Id {
        self.root
    }

    /// The value at `id` (ids come from this pickle; a stray one reads as `None`).
    pub fn get(&self, id: Id) -> &Value {
        self.values.get(id).unwrap_or(&NONE)
    }

    /// Every global the pickle names, in first-use order.
    pub fn globals(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for value in &self.values {
            if let Value::Global(g) = value {
                let name = g.to_string();
                if !seen.contains(&name) {
                    seen.push(name);
                }
            }
        }
        seen
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for messages.
    op_pos: usize,
    values: Vec<Value>,
    stack: Vec<Id>,
    /// Stack heights at each open `MARK` (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    /// Runs one opcode; true at `STOP`.
    fn step(&mut self) -> Result<bool, Fault> {
        self.op_pos = self.pos;
        let op = self.byte("an opcode")?;
        if op == b'.' {
            return Ok(true);
        }
        if let Some(value) = self.literal(op)? {
            self.push_new(value)?;
            return Ok(false);
        }
        if self.container(op)? || self.memo_op(op)? || self.call(op)? {
            return Ok(false);
        }
        match op {
            0x80 => {
                let version = self.byte("the protocol")?;
                if version > 5 {
                    return Err(self.corrupt(format!("pickle protocol {version} is unknown")));
                }
            }
            0x95 => {
                self.take(8, "a FRAME length")?;
            }
            op => return Err(self.unknown(op)),
        }
        Ok(false)
    }

    /// Opcodes that push one new value built from their argument bytes.
    fn literal(&mut self, op: u8) -> Result<Option<Value>, Fault> {
        Ok(Some(match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'K' => Value::Int(i64::from(self.byte("BININT1")?)),
            b'M' => Value::Int(i64::from(u16::from_le_bytes(self.array("BININT2")?))),
            b'J' => Value::Int(i64::from(i32::from_le_bytes(self.array("BININT")?))),
            0x8a => {
                let n = usize::from(self.byte("LONG1")?);
                long(self.take(n, "LONG1")?)
            }
            0x8b => {
                let n = self.length(4, "LONG4")?;
                long(self.take(n, "LONG4")?)
            }
            b'G' => Value::Float(f64::from_be_bytes(self.array("BINFLOAT")?)),
            b'X' | 0x8c | 0x8d => self.unicode(op)?,
            b'T' | b'U' => {
                let n = self.length(if op == b'T' { 4 } else { 1 }, "BINSTRING")?;
                let bytes = self.take(n, "BINSTRING")?;
                match std::str::from_utf8(bytes) {
                    Ok(s) => Value::Str(s.to_string()),
                    Err(_) => Value::Bytes(bytes.to_vec()),
                }
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let width = match op {
                    b'B' => 4,
                    b'C' => 1,
                    _ => 8,
                };
                let n = self.length(width, "BINBYTES")?;
                Value::Bytes(self.take(n, "BINBYTES")?.to_vec())
            }
            b')' => Value::Tuple(Vec::new()),
            b']' => Value::List(Vec::new()),
            b'}' => Value::Dict(Vec::new()),
            0x8f => Value::Set(Vec::new()),
            b'c' => {
                let module = self.line("GLOBAL")?;
                let name = self.line("GLOBAL")?;
                Value::Global(Global::new(&module, &name))
            }
            0x93 => {
                let name = self.pop_str("STACK_GLOBAL")?;
                let module = self.pop_str("STACK_GLOBAL")?;
                Value::Global(Global::new(&module, &name))
            }
            _ => return Ok(None),
        }))
    }

    fn unicode(&mut self, op: u8) -> Result<Value, Fault> {
        let width = match op {
            b'X' => 4,
            0x8c => 1,
            _ => 8,
        };
        let n = self.length(width, "BINUNICODE")?;
        let bytes = self.take(n, "BINUNICODE")?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(s.to_string())),
            Err(e) => Err(self.corrupt(format!("a string is not UTF-8 ({e})"))),
        }
    }

    /// Opcodes that build or fill tuples, lists, dicts and sets, and stack moves.
    fn container(&mut self, op: u8) -> Result<bool, Fault> {
        match op {
            b'(' => self.marks.push(self.stack.len()),
            b't' => {
                let items = self.pop_mark()?;
                self.push_new(Value::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Value::Tuple(items))?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_new(Value::List(items))?;
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push_new(Value::Dict(pairs))?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_new(Value::Set(items))?;
            }
            b'a' => {
                let item = self.pop()?;
                self.extend(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![(key, value)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.set_items(pairs)?;
            }
            0x90 => {
                let items = self.pop_mark()?;
                self.add_items(items)?;
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn memo_op(&mut self, op: u8) -> Result<bool, Fault> {
        let key = match op {
            b'q' | b'h' => u32::from(self.byte("a memo key")?),
            b'r' | b'j' => u32::from_le_bytes(self.array("a memo key")?),
            0x94 => u32::try_from(self.memo.len()).map_err(|_| self.too_many_memo())?,
            _ => return Ok(false),
        };
        if matches!(op, b'h' | b'j') {
            let id = match self.memo.get(&key) {
                Some(id) => *id,
                None => return Err(self.corrupt(format!("memo key {key} was never stored"))),
            };
            self.stack.push(id);
        } else {
            let top = self.top()?;
            if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
                return Err(self.too_many_memo());
            }
            self.memo.insert(key, top);
        }
        Ok(true)
    }

    /// `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `BUILD`, `BINPERSID`: what Python would call.
    fn call(&mut self, op: u8) -> Result<bool, Fault> {
        match op {
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                self.reduce(func, args)?;
            }
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // keyword arguments, given to `__new__` only
                }
                let args = self.pop()?;
                let class = self.pop()?;
                self.new_object(class, args)?;
            }
            b'b' => {
                let state = self.pop()?;
                self.build(state)?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push_new(Value::Persistent(pid))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn reduce(&mut self, func: Id, args: Id) -> Result<(), Fault> {
        let global = self.callable(func, "calls")?;
        let value = match policy::call(&global) {
            None => return Err(Fault::Unsafe(policy::refusal(&global, "calls"))),
            Some(Call::Dict) => Value::Dict(self.dict_args(&global, args)?),
            Some(Call::Set) => Value::Set(self.set_args(args)?),
            Some(Call::Data) => {
                self.check_call_args(&global, args)?;
                Value::Object(Object {
                    class: global,
                    args,
                    state: None,
                })
            }
        };
        self.push_new(value)
    }

    fn new_object(&mut self, class: Id, args: Id) -> Result<(), Fault> {
        let global = self.callable(class, "makes an instance of")?;
        if !policy::instantiate(&global) {
            return Err(Fault::Unsafe(policy::refusal(
                &global,
                "makes an instance of",
            )));
        }
        let value = if global.is("collections", "OrderedDict") {
            Value::Dict(Vec::new())
        } else {
            Value::Object(Object {
                class: global,
                args,
                state: None,
            })
        };
        self.push_new(value)
    }

    /// The global a call names; a value built by the pickle is never called.
    fn callable(&self, id: Id, how: &str) -> Result<Global, Fault> {
        match self.value(id) {
            Value::Global(g) => Ok(g.clone()),
            other => Err(Fault::Unsafe(format!(
                "refused: the pickle {how} a {} it built at byte {}, which Python would call; \
                 torch files only call named globals",
                other.kind(),
                self.op_pos
            ))),
        }
    }

    /// Calls whose arguments name other globals that Python would call in turn.
    fn check_call_args(&self, global: &Global, args: Id) -> Result<(), Fault> {
        let items = match self.value(args) {
            Value::Tuple(items) => items.as_slice(),
            other => return Err(self.corrupt(format!("`{global}` called with a {}", other.kind()))),
        };
        let named = |i: usize| match items.get(i).map(|id| self.value(*id)) {
            Some(Value::Global(g)) => Some(g.clone()),
            _ => None,
        };
        if global.is("torch._tensor", "_rebuild_from_type_v2") {
            let how = format!("calls (through `{global}`)");
            match named(0) {
                Some(f)
                    if f.module == "torch._utils"
                        && policy::TENSOR_REBUILDERS.contains(&f.name.as_str()) => {}
                Some(f) => return Err(Fault::Unsafe(policy::refusal(&f, &how))),
                None => return Err(self.corrupt(format!("`{global}` without a rebuilder"))),
            }
            match named(1) {
                Some(class) if policy::instantiate(&class) => {}
                Some(class) => return Err(Fault::Unsafe(policy::refusal(&class, &how))),
                None => return Err(self.corrupt(format!("`{global}` without a tensor class"))),
            }
        }
        if global.is("copyreg", "_reconstructor") {
            if let Some(class) = named(0).filter(|c| !policy::instantiate(c)) {
                return Err(Fault::Unsafe(policy::refusal(
                    &class,
                    "makes an instance of",
                )));
            }
            match named(1) {
                Some(base) if base.is("builtins", "object") => {}
                Some(base) => return Err(Fault::Unsafe(policy::refusal(&base, "initialises"))),
                None => return Err(self.corrupt("copyreg._reconstructor without a base class")),
            }
        }
        Ok(())
    }

    /// The items of `OrderedDict(pairs)`; `defaultdict(factory)` starts empty.
    fn dict_args(&self, global: &Global, args: Id) -> Result<Vec<(Id, Id)>, Fault> {
        let items = match self.value(args) {
            Value::Tuple(items) => items,
            other => return Err(self.corrupt(format!("`{global}` called with a {}", other.kind()))),
        };
        if global.name == "defaultdict" || items.is_empty() {
            return Ok(Vec::new());
        }
        let pairs = match items.first().map(|id| self.value(*id)) {
            Some(Value::List(pairs) | Value::Tuple(pairs)) => pairs,
            _ => return Err(self.corrupt(format!("`{global}` called with a non-list"))),
        };
        pairs
            .iter()
            .map(|pair| match self.value(*pair) {
                Value::Tuple(kv) if kv.len() == 2 => Ok((kv[0], kv[1])),
                _ => Err(self.corrupt(format!("`{global}` item is not a pair"))),
            })
            .collect()
    }

    /// The items of `set(iterable)`.
    fn set_args(&self, args: Id) -> Result<Vec<Id>, Fault> {
        match self.value(args) {
            Value::Tuple(items) if items.is_empty() => Ok(Vec::new()),
            Value::Tuple(items) => match items.first().map(|id| self.value(*id)) {
                Some(Value::List(v) | Value::Tuple(v) | Value::Set(v)) => Ok(v.clone()),
                _ => Err(self.corrupt("set() of a non-sequence")),
            },
            other => Err(self.corrupt(format!("set() called with a {}", other.kind()))),
        }
    }

    /// `BUILD`: Python would call the object's `__setstate__` or update its `__dict__`.
    fn build(&mut self, state: Id) -> Result<(), Fault> {
        let target = self.top()?;
        let merged = match (self.value(target), self.value(state)) {
            (Value::Object(o), Value::Dict(new)) => match o.state.map(|s| self.value(s)) {
                Some(Value::Dict(old)) => Some(old.iter().chain(new).copied().collect()),
                _ => None,
            },
            (Value::Object(_), _) => None,
            // An `OrderedDict` state dict carries `_metadata` (layer versions) as an
            // attribute, set by BUILD; it holds nothing oodbox reads.
            (Value::Dict(_), _) => return Ok(()),
            (Value::Global(g), _) => {
                return Err(Fault::Unsafe(format!(
                    "refused: the pickle sets attributes of the class `{g}` (BUILD at byte {}), \
                     which would change code when the checkpoint is loaded in Python",
                    self.op_pos
                )))
            }
            (other, _) => return Err(self.corrupt(format!("BUILD on a {}", other.kind()))),
        };
        let state = match merged {
            Some(pairs) => self.alloc(Value::Dict(pairs))?,
            None => state,
        };
        if let Some(Value::Object(o)) = self.values.get_mut(target) {
            o.state = Some(state);
        }
        Ok(())
    }

    fn extend(&mut self, items: Vec<Id>) -> Result<(), Fault> {
        let target = self.top()?;
        let op_pos = self.op_pos;
        match self.values.get_mut(target) {
            Some(Value::List(list)) => {
                list.extend(items);
                Ok(())
            }
            other => Err(mutation_refused(other, "APPEND", op_pos)),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> Result<(), Fault> {
        let target = self.top()?;
        let op_pos = self.op_pos;
        match self.values.get_mut(target) {
            Some(Value::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            other => Err(mutation_refused(other, "SETITEM", op_pos)),
        }
    }

    fn add_items(&mut self, items: Vec<Id>) -> Result<(), Fault> {
        let target = self.top()?;
        let op_pos = self.op_pos;
        match self.values.get_mut(target) {
            Some(Value::Set(set)) => {
                set.extend(items);
                Ok(())
            }
            other => Err(mutation_refused(other, "ADDITEMS", op_pos)),
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, Fault> {
        if !items.len().is_multiple_of(2) {
            return Err(self.corrupt("a dict with an odd number of keys and values"));
        }
        Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
    }

    fn value(&self, id: Id) -> &Value {
        self.values.get(id).unwrap_or(&NONE)
    }

    fn alloc(&mut self, value: Value) -> Result<Id, Fault> {
        if self.values.len() >= MAX_VALUES {
            return Err(self.corrupt(format!("more than {MAX_VALUES} objects")));
        }
        self.values.push(value);
        Ok(self.values.len() - 1)
    }

    fn push_new(&mut self, value: Value) -> Result<(), Fault> {
        let id = self.alloc(value)?;
        self.stack.push(id);
        Ok(())
    }

    /// The stack height below which the current `MARK` frame may not reach.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, Fault> {
        if self.stack.len() <= self.floor() {
            return Err(self.corrupt("the stack is empty"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.corrupt("the stack is empty"))
    }

    fn top(&self) -> Result<Id, Fault> {
        match self.stack.last() {
            Some(id) if self.stack.len() > self.floor() => Ok(*id),
            _ => Err(self.corrupt("the stack is empty")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, Fault> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("no MARK is open"))?;
        if mark > self.stack.len() {
            return Err(self.corrupt("a MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pop_str(&mut self, what: &str) -> Result<String, Fault> {
        let id = self.pop()?;
        match self.value(id) {
            Value::Str(s) => Ok(s.clone()),
            other => Err(self.corrupt(format!("{what} of a {}", other.kind()))),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Fault> {
        let data: &'a [u8] = self.data;
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or_else(|| {
                self.corrupt(format!(
                    "truncated: {what} needs {n} bytes, {} are left",
                    data.len().saturating_sub(self.pos)
                ))
            })?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Fault> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn byte(&mut self, what: &str) -> Result<u8, Fault> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian length of `width` bytes (signed for 4-byte `LONG4` and `BINSTRING`).
    fn length(&mut self, width: usize, what: &str) -> Result<usize, Fault> {
        let n: i128 = match width {
            1 => i128::from(self.byte(what)?),
            4 if matches!(what, "LONG4" | "BINSTRING") => {
                i128::from(i32::from_le_bytes(self.array(what)?))
            }
            4 => i128::from(u32::from_le_bytes(self.array(what)?)),
            _ => i128::from(u64::from_le_bytes(self.array(what)?)),
        };
        usize::try_from(n).map_err(|_| self.corrupt(format!("{what} has length {n}")))
    }

    fn line(&mut self, what: &str) -> Result<String, Fault> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let window = &rest[..rest.len().min(MAX_GLOBAL_LINE)];
        let end = window
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.corrupt(format!("{what} line without an end")))?;
        let text = std::str::from_utf8(&window[..end])
            .map_err(|_| self.corrupt(format!("{what} line is not UTF-8")))?;
        self.pos += end + 1;
        Ok(text.trim_end_matches('\r').to_string())
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> Fault {
        Fault::Corrupt(format!(
            "data.pkl: {reason} (opcode at byte {})",
            self.op_pos
        ))
    }

    fn too_many_memo(&self) -> Fault {
        self.corrupt(format!("more than {MAX_MEMO} memo entries"))
    }

    fn unknown(&self, op: u8) -> Fault {
        let reason = match opcode_name(op) {
            Some(name) => format!(
                "opcode {name} (0x{op:02x}) at byte {} is not read: torch.save never writes it",
                self.op_pos
            ),
            None => format!("unknown opcode 0x{op:02x} at byte {}", self.op_pos),
        };
        Fault::Corrupt(format!("data.pkl: {reason}"))
    }
}

/// The names of the opcodes this machine leaves out (text protocol 0, extension registry,
/// out-of-band buffers; `INST` and `OBJ` call classes).
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// Appending to or setting items of anything but a list, dict or set calls that object's own
/// methods in Python: refused when it is an object, malformed otherwise.
fn mutation_refused(target: Option<&mut Value>, op: &str, op_pos: usize) -> Fault {
    match target {
        Some(Value::Object(o)) => Fault::Unsafe(format!(
            "refused: {op} at byte {op_pos} of data.pkl calls a method of `{}`, which would run \
             code when the checkpoint is loaded in Python",
            o.class
        )),
        other => Fault::Corrupt(format!(
            "data.pkl: {op} on a {} (opcode at byte {op_pos})",
            other.map_or("missing value", |v| v.kind())
        )),
    }
}

/// A little-endian two's complement integer of any width.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.to_vec());
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}
