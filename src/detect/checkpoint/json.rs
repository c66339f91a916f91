//! Plain pickled values (`yaml`, `train_args`) as JSON: dicts, lists, tuples and sets, strings,
//! numbers, booleans and `None`, plus the value types ultralytics stores in its metadata
//! (paths, namespaces, devices, numpy scalars). Anything else becomes `{"__class__": name}`.

use serde_json::{Map, Number, Value as Json};

use super::pickle::{Fault, Id, Object, Value};
use super::walk::Walker;

impl Walker<'_> {
    pub fn json(&self, id: Id) -> Result<Json, Fault> {
        self.json_at(id, 0)
    }

    fn json_at(&self, id: Id, depth: usize) -> Result<Json, Fault> {
        self.visit(depth, "a value")?;
        Ok(match self.get(id) {
            Value::None => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::BigInt(bytes) => Json::String(format!("<{}-byte int>", bytes.len())),
            Value::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Value::Str(s) => Json::String(s.clone()),
            Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
            Value::Tuple(items) | Value::List(items) | Value::Set(items) => Json::Array(
                items
                    .iter()
                    .map(|i| self.json_at(*i, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Dict(pairs) => self.json_dict(pairs, depth)?,
            Value::Global(g) => Json::String(g.to_string()),
            Value::Object(o) if o.class.is("_codecs", "encode") => {
                let bytes = self.bytes(id).unwrap_or_default();
                Json::String(String::from_utf8_lossy(&bytes).into_owned())
            }
            Value::Object(o) => self.json_object(o, depth)?,
            Value::Persistent(_) => Json::Null,
        })
    }

    fn json_dict(&self, pairs: &[(Id, Id)], depth: usize) -> Result<Json, Fault> {
        let mut map = Map::new();
        for (key, value) in pairs {
            let key = match self.get(*key) {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                Value::None => "None".to_string(),
                other => format!("<{}>", other.kind()),
            };
            map.insert(key, self.json_at(*value, depth + 1)?);
        }
        Ok(Json::Object(map))
    }

    fn json_object(&self, o: &Object, depth: usize) -> Result<Json, Fault> {
        let args = match self.get(o.args) {
            Value::Tuple(items) => items.as_slice(),
            _ => &[],
        };
        let (module, name) = (o.class.module.as_str(), o.class.name.as_str());
        let first = || {
            args.first()
                .map(|a| self.json_at(*a, depth + 1))
                .transpose()
        };
        match (module, name) {
            ("torch", "Size") => Ok(first()?.unwrap_or(Json::Array(Vec::new()))),
            ("torch", "device") => {
                let parts: Vec<String> = args.iter().map(|a| self.text(*a)).collect();
                Ok(Json::String(parts.join(":")))
            }
            ("pathlib" | "pathlib._local", _) => {
                let parts: Vec<String> = args.iter().map(|a| self.text(*a)).collect();
                Ok(Json::String(parts.join("/").replace("//", "/")))
            }
            ("types", "SimpleNamespace")
            | ("argparse", "Namespace")
            | ("ultralytics.utils" | "ultralytics.yolo.utils", "IterableSimpleNamespace") => {
                match o.state {
                    Some(state) => self.json_at(state, depth + 1),
                    None => Ok(Json::Object(Map::new())),
                }
            }
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => {
                Ok(self.numpy_scalar(args).unwrap_or(Json::Null))
            }
            _ => {
                let mut map = Map::new();
                map.insert("__class__".into(), Json::String(o.class.to_string()));
                Ok(Json::Object(map))
            }
        }
    }

    /// A string or int argument as text.
    fn text(&self, id: Id) -> String {
        match self.get(id) {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => format!("<{}>", other.kind()),
        }
    }

    /// `numpy.core.multiarray.scalar(numpy.dtype('f8', ...), raw bytes)` of the common
    /// little-endian number types.
    fn numpy_scalar(&self, args: &[Id]) -> Option<Json> {
        let (dtype, data) = (*args.first()?, *args.get(1)?);
        let Value::Object(dtype) = self.get(dtype) else {
            return None;
        };
        let code = self.str(*self.items(dtype.args)?.first()?)?;
        let raw = self.bytes(data)?;
        let raw = raw.as_slice();
        Some(match (code, raw.len()) {
            ("f8", 8) => Number::from_f64(f64::from_le_bytes(raw.try_into().ok()?))?.into(),
            ("f4", 4) => {
                Number::from_f64(f64::from(f32::from_le_bytes(raw.try_into().ok()?)))?.into()
            }
            ("i8", 8) => Json::from(i64::from_le_bytes(raw.try_into().ok()?)),
            ("i4", 4) => Json::from(i32::from_le_bytes(raw.try_into().ok()?)),
            ("b1", 1) => Json::Bool(raw.first() != Some(&0)),
            _ => return None,
        })
    }

    /// Bytes, or protocol 2's spelling of them: `_codecs.encode(text, 'latin1')`.
    fn bytes(&self, id: Id) -> Option<Vec<u8>> {
        match self.get(id) {
            Value::Bytes(b) => Some(b.clone()),
            Value::Object(o) if o.class.is("_codecs", "encode") => {
                let args = self.items(o.args)?;
                let (text, encoding) = (
                    self.str(*args.first()?)?,
                    args.get(1).and_then(|e| self.str(*e)),
                );
                match encoding {
                    Some("latin1" | "latin-1") => text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect(),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}
