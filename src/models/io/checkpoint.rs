//! Weights at scale: read a Hugging Face model directory's checkpoint as published, without
//! Python. Files are memory-mapped and each tensor keeps its stored dtype, so a large bf16
//! checkpoint costs no copy and no f32 blow-up until a model places its tensors.
//!
//! Reads `model.safetensors`, sharded safetensors, torch's `pytorch_model.bin` (zip format) and
//! its shards. A `.bin` is a pickle: a small interpreter builds only tensors and plain
//! containers and never runs anything, so a malicious file is refused by the name of what it
//! would have called. Writes checkpoints the way transformers does.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Cursor, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype as StDtype, View};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

/// (dtype, safetensors dtype, torch storage class): one table for every conversion.
const DTYPES: [(Dtype, StDtype, &str); 10] = [
    (Dtype::F32, StDtype::F32, "FloatStorage"),
    (Dtype::F16, StDtype::F16, "HalfStorage"),
    (Dtype::BF16, StDtype::BF16, "BFloat16Storage"),
    (Dtype::F64, StDtype::F64, "DoubleStorage"),
    (Dtype::I64, StDtype::I64, "LongStorage"),
    (Dtype::I32, StDtype::I32, "IntStorage"),
    (Dtype::I16, StDtype::I16, "ShortStorage"),
    (Dtype::I8, StDtype::I8, "CharStorage"),
    (Dtype::U8, StDtype::U8, "ByteStorage"),
    (Dtype::Bool, StDtype::BOOL, "BoolStorage"),
];

impl Dtype {
    /// Bytes per element, to turn shapes into byte ranges.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    fn from_safetensors(d: StDtype) -> Option<Dtype> {
        DTYPES.iter().find(|e| e.1 == d).map(|e| e.0)
    }

    fn to_safetensors(self) -> StDtype {
        DTYPES
            .iter()
            .find(|e| e.0 == self)
            .map_or(StDtype::U8, |e| e.1)
    }

    /// torch 2.x writes an untyped storage as bytes (`torch.UntypedStorage`, dtype uint8).
    fn from_torch_storage(class: &str) -> Option<Dtype> {
        let typed = DTYPES.iter().find(|e| e.2 == class).map(|e| e.0);
        typed.or((class == "UntypedStorage").then_some(Dtype::U8))
    }
}

/// Where a tensor's bytes live: a shared file map (no copy) or, for gathered views, a buffer.
#[derive(Clone)]
enum Bytes {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, range } => &map[range.clone()],
            Bytes::Owned(v) => v,
        }
    }

    /// A sub-range: a mapped one shares the map, so tied weights stay one copy.
    fn slice(&self, r: Range<usize>) -> Bytes {
        match self {
            Bytes::Mapped { map, range } => {
                let range = range.start + r.start..range.start + r.end;
                Bytes::Mapped {
                    map: map.clone(),
                    range,
                }
            }
            Bytes::Owned(v) => Bytes::Owned(v[r].to_vec()),
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Bytes::Owned(_)) {
            "owned"
        } else {
            "mapped"
        };
        write!(f, "{} {kind} bytes", self.as_slice().len())
    }
}

/// One tensor as stored: its bytes stay in the file's memory map (or an owned buffer) until placed.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: Bytes,
}

/// Little-endian elements of N bytes, decoded one by one: a mapped tensor may be unaligned.
fn decode<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    let mut a = [0; N];
    b.chunks_exact(N)
        .map(|c| {
            f({
                a.copy_from_slice(c);
                a
            })
        })
        .collect()
}

impl RawTensor {
    /// The row-major little-endian bytes, to hand to a backend without converting.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Whether the tensor holds floating-point values (weights, not ids or masks).
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        )
    }

    /// Give the tensor's file pages back to the kernel once it is placed, so loading a model
    /// holds the model and one tensor, not the model and the whole mapped file. A later read
    /// maps the pages in again from the file (the map is read-only), so this never loses data.
    pub fn release(&self) {
        if let Bytes::Mapped { map, range } = &self.data {
            let page = 4096;
            let start = range.start.div_ceil(page) * page;
            let end = range.end / page * page;
            if end > start {
                // SAFETY: the map is a read-only shared file mapping; dropping its pages only
                // makes the next access read them from the file again.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Values as f32 for the f32 models; integers give `None` since they are not weights.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let b = self.bytes();
        Some(match self.dtype {
            Dtype::F32 => decode(b, f32::from_le_bytes),
            Dtype::F64 => decode(b, |a| f64::from_le_bytes(a) as f32),
            Dtype::F16 => decode(b, |a| half::f16::from_le_bytes(a).to_f32()),
            Dtype::BF16 => decode(b, |a| half::bf16::from_le_bytes(a).to_f32()),
            _ => return None,
        })
    }
}

/// Why a checkpoint could not be read or written; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused: a wrong path or permissions.
    #[error("{}: {source}; check that it exists and is readable (writable, to save)", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Not a model directory, or one without weights.
    #[error(
        "{}: no checkpoint found (looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin, pytorch_model.bin.index.json); point at a Hugging Face model directory",
        dir.display()
    )]
    NotFound { dir: PathBuf },
    /// A partial download: the index names a shard that is not there.
    #[error("{}: names shard `{shard}`, which is missing; download the whole checkpoint again", index.display())]
    MissingShard { index: PathBuf, shard: String },
    /// A stale shard or index: the index places a tensor in a shard that lacks it.
    #[error(
        "{}: lacks tensor `{tensor}`, which {} places there; the shard or index is stale: \
         download the checkpoint again",
        shard.display(), index.display()
    )]
    MissingTensor {
        index: PathBuf,
        shard: PathBuf,
        tensor: String,
    },
    /// A pickle that would call something beyond tensors and containers: possibly malicious.
    #[error(
        "{}: refuses to load `{global}`: a pytorch_model.bin may hold only tensors and plain \
         containers; convert trusted files with transformers \
         (save_pretrained(..., safe_serialization=True))",
        path.display()
    )]
    Refused { path: PathBuf, global: String },
    /// Damaged or truncated: downloading it again fixes it.
    #[error("{}: {msg}; the file is damaged or incomplete: download it again", path.display())]
    Corrupt { path: PathBuf, msg: String },
    /// Well-formed but outside what is read here: converting it fixes it.
    #[error(
        "{}: {msg}; convert it with transformers (save_pretrained(..., safe_serialization=True))",
        path.display()
    )]
    Unsupported { path: PathBuf, msg: String },
    /// write_dir was handed inconsistent tensors: a bug in the caller.
    #[error("{}: cannot write tensor `{tensor}`: {msg}", dir.display())]
    BadTensor {
        dir: PathBuf,
        tensor: String,
        msg: String,
    },
}

fn corrupt(path: &Path, msg: impl Display) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.into(),
        msg: msg.to_string(),
    }
}

fn unsupported(path: &Path, msg: impl Display) -> CheckpointError {
    CheckpointError::Unsupported {
        path: path.into(),
        msg: msg.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.into(),
        source,
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// An index's `weight_map`: which shard holds each tensor.
struct Index {
    path: PathBuf,
    weight_map: BTreeMap<String, String>,
}

fn read_index(path: &Path) -> Result<Index, CheckpointError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(path, format!("invalid JSON ({e})")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(corrupt(path, "no `weight_map` object"));
    };
    let mut weight_map = BTreeMap::new();
    for (name, shard) in map {
        // A plain file name: an index must not reach outside its directory.
        match shard.as_str() {
            Some(s) if !s.is_empty() && s != ".." && !s.contains(['/', '\\']) => {
                weight_map.insert(name.clone(), s.to_string())
            }
            _ => {
                return Err(corrupt(
                    path,
                    format!("`weight_map.{name}` is not a file name"),
                ));
            }
        };
    }
    Ok(Index {
        path: path.into(),
        weight_map,
    })
}

/// transformers' lookup order; shards sorted by name, as transformers loads them.
fn locate(dir: &Path) -> Result<(Vec<PathBuf>, Option<Index>), CheckpointError> {
    for kind in ["model.safetensors", "pytorch_model.bin"] {
        if dir.join(kind).is_file() {
            return Ok((vec![dir.join(kind)], None));
        }
        let index = dir.join(format!("{kind}.index.json"));
        if index.is_file() {
            let index = read_index(&index)?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            let mut files = Vec::new();
            for shard in shards {
                if !dir.join(shard).is_file() {
                    let (index, shard) = (index.path.clone(), shard.clone());
                    return Err(CheckpointError::MissingShard { index, shard });
                }
                files.push(dir.join(shard));
            }
            return Ok((files, Some(index)));
        }
    }
    Err(CheckpointError::NotFound { dir: dir.into() })
}

/// Where a checkpoint's tensors are: ordered file list.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    Ok(locate(dir)?.0)
}

/// Every tensor of a model directory, checked against its index when sharded.
pub fn read_dir(dir: &Path) -> Result<Vec<RawTensor>, CheckpointError> {
    let (files, index) = locate(dir)?;
    let mut out = Vec::new();
    for file in files {
        let mut tensors = read_file(&file)?;
        if let Some(index) = &index {
            let shard = file_name(&file);
            let here: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            let mut listed = index.weight_map.iter().filter(|(_, s)| *s == shard);
            if let Some((tensor, _)) = listed.find(|(n, _)| !here.contains(n.as_str())) {
                let (index, tensor) = (index.path.clone(), tensor.clone());
                return Err(CheckpointError::MissingTensor {
                    index,
                    shard: file,
                    tensor,
                });
            }
            // A tensor the index places in another shard is that shard's to give.
            tensors.retain(|t| index.weight_map.get(&t.name).is_none_or(|s| s == shard));
        }
        out.extend(tensors);
    }
    Ok(out)
}

/// One .safetensors or .bin file's tensors, in file order.
pub fn read_file(path: &Path) -> Result<Vec<RawTensor>, CheckpointError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only; a checkpoint rewritten in place under a running process
    // is outside what any loader (safetensors, torch) guards against.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?);
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path, map)
    } else if map.starts_with(b"PK\x03\x04") {
        read_torch(path, map)
    } else {
        let msg = "is not a zip archive but a legacy (torch < 1.6) or non-torch file";
        Err(unsupported(path, msg))
    }
}

fn read_safetensors(path: &Path, map: Arc<Mmap>) -> Result<Vec<RawTensor>, CheckpointError> {
    let (header_len, meta) = SafeTensors::read_metadata(&map[..])
        .map_err(|e| corrupt(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = Vec::new();
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let Some(dtype) = Dtype::from_safetensors(info.dtype) else {
            return Err(unsupported(
                path,
                format!("tensor `{name}` has dtype {:?}", info.dtype),
            ));
        };
        let start = 8 + header_len + info.data_offsets.0;
        let range = start..start + (info.data_offsets.1 - info.data_offsets.0);
        let data = Bytes::Mapped {
            map: map.clone(),
            range,
        };
        out.push(RawTensor {
            name,
            dtype,
            shape: info.shape.clone(),
            data,
        });
    }
    Ok(out)
}

type Zip<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// A zip entry's bytes: a stored entry (torch.save's) is a slice of the map; others inflated.
fn zip_entry(
    path: &Path,
    zip: &mut Zip,
    map: &Arc<Mmap>,
    name: &str,
) -> Result<Bytes, CheckpointError> {
    let bad = |e: &dyn Display| corrupt(path, format!("zip entry `{name}`: {e}"));
    let i = zip.index_for_name(name).ok_or_else(|| bad(&"missing"))?;
    let entry = zip.by_index_raw(i).map_err(|e| bad(&e))?;
    if entry.compression() == zip::CompressionMethod::Stored {
        let start = entry.data_start().map_or(usize::MAX, |s| s as usize);
        let range = start..start.saturating_add(entry.size() as usize);
        if range.end > map.len() {
            return Err(bad(&"extends past the end of the file"));
        }
        return Ok(Bytes::Mapped {
            map: map.clone(),
            range,
        });
    }
    drop(entry);
    let mut entry = zip
        .by_index(i)
        .map_err(|e| unsupported(path, format!("zip entry `{name}`: {e}")))?;
    let mut v = Vec::new();
    entry.read_to_end(&mut v).map_err(|e| bad(&e))?;
    Ok(Bytes::Owned(v))
}

fn read_torch(path: &Path, map: Arc<Mmap>) -> Result<Vec<RawTensor>, CheckpointError> {
    let mut zip = Zip::new(Cursor::new(&map[..]))
        .map_err(|e| corrupt(path, format!("unreadable zip ({e})")))?;
    // `<archive>/data.pkl`, where <archive> is whatever name torch.save chose.
    let prefix = zip.file_names().find_map(|n| {
        let p = n.strip_suffix("data.pkl")?;
        (p.ends_with('/') && p.matches('/').count() == 1).then(|| p.to_string())
    });
    let Some(prefix) = prefix else {
        return Err(unsupported(
            path,
            "has no `<archive>/data.pkl`: not written by torch.save",
        ));
    };
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some()
        && zip_entry(path, &mut zip, &map, &byteorder)?.as_slice() != b"little"
    {
        return Err(unsupported(path, "was saved on a big-endian machine"));
    }
    let pickle = zip_entry(path, &mut zip, &map, &format!("{prefix}data.pkl"))?;
    let Val::Dict(items) = Unpickler::new(path, pickle.as_slice()).run()? else {
        return Err(unsupported(
            path,
            "holds no dict of tensors (save model.state_dict())",
        ));
    };
    let mut storages: HashMap<String, Bytes> = HashMap::new();
    let mut out = Vec::new();
    for (key, value) in items.borrow().iter() {
        let Val::Str(name) = key else {
            return Err(unsupported(
                path,
                format!("has a {} key, not a tensor name", key.kind()),
            ));
        };
        // A nested {"state_dict": {...}} or an "epoch" counter: not a published checkpoint.
        let Val::Tensor(spec) = value else {
            let msg = format!("`{name}` is a {}, not a tensor", value.kind());
            return Err(unsupported(path, msg));
        };
        let storage = match storages.get(&spec.key) {
            Some(s) => s.clone(),
            None => zip_entry(path, &mut zip, &map, &format!("{prefix}data/{}", spec.key))?,
        };
        storages.insert(spec.key.clone(), storage.clone());
        let data =
            place(spec, &storage).map_err(|m| corrupt(path, format!("tensor `{name}`: {m}")))?;
        let shape = spec.shape.clone();
        out.push(RawTensor {
            name: name.clone(),
            dtype: spec.dtype,
            shape,
            data,
        });
    }
    Ok(out)
}

/// What `_rebuild_tensor_v2` describes: a strided view of a storage.
#[derive(Debug)]
struct TensorSpec {
    key: String,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A view's bytes: a slice of the storage when row-major, else gathered element by element.
fn place(spec: &TensorSpec, storage: &Bytes) -> Result<Bytes, String> {
    let (s, dims) = (spec.dtype.size(), spec.shape.iter().zip(&spec.stride));
    if spec.shape.len() != spec.stride.len() {
        return Err(format!(
            "shape {:?} and stride {:?} differ in rank",
            spec.shape, spec.stride
        ));
    }
    if spec.shape.contains(&0) {
        return Ok(Bytes::Owned(Vec::new()));
    }
    // The furthest element the view reaches must lie inside the storage.
    let last = dims.clone().try_fold(spec.offset, |acc, (&d, &st)| {
        acc.checked_add((d - 1).checked_mul(st)?)
    });
    let available = storage.as_slice().len() / s;
    if last.is_none_or(|l| l >= available) {
        return Err(format!(
            "view reaches past its storage of {available} elements"
        ));
    }
    // Checked: zero strides (expanded views) let a view's size outgrow its storage.
    let numel = spec
        .shape
        .iter()
        .try_fold(1, |n: usize, &d| n.checked_mul(d));
    let numel = numel
        .filter(|n| n.checked_mul(s).is_some())
        .ok_or("the view's size overflows")?;
    let (mut expect, mut contiguous) = (1, true);
    for (&d, &st) in dims.rev() {
        contiguous &= d == 1 || st == expect;
        expect *= d;
    }
    if contiguous {
        return Ok(storage.slice(spec.offset * s..(spec.offset + numel) * s));
    }
    let (src, mut out) = (storage.as_slice(), Vec::new());
    out.try_reserve_exact(numel * s)
        .map_err(|_| format!("{numel} elements do not fit in memory"))?;
    let mut index = vec![0usize; spec.shape.len()];
    for _ in 0..numel {
        let e: usize = spec.offset
            + index
                .iter()
                .zip(&spec.stride)
                .map(|(i, st)| i * st)
                .sum::<usize>();
        out.extend_from_slice(&src[e * s..(e + 1) * s]);
        for (i, &d) in index.iter_mut().zip(&spec.shape).rev() {
            *i = (*i + 1) % d;
            if *i != 0 {
                break;
            }
        }
    }
    Ok(Bytes::Owned(out))
}

/// The only callables a state dict needs; anything else is refused by name.
#[derive(Debug, Clone, Copy)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

/// A pickle value. Lists and dicts are shared, as pickle's memo shares them.
#[derive(Debug, Clone)]
enum Val {
    Int(i64),
    Str(String),
    Tuple(Rc<Vec<Val>>),
    List(Rc<RefCell<Vec<Val>>>),
    Dict(Rc<RefCell<Vec<(Val, Val)>>>),
    Global(Global),
    Storage(Rc<(String, Dtype)>),
    Tensor(Rc<TensorSpec>),
    /// Floats, bytes, bools and None: placeholders, never inspected.
    Other(&'static str),
}

impl Val {
    /// For messages: what a value is.
    fn kind(&self) -> &'static str {
        match self {
            Val::Int(_) => "int",
            Val::Str(_) => "str",
            Val::Tuple(_) => "tuple",
            Val::List(_) => "list",
            Val::Dict(_) => "dict",
            Val::Global(_) => "class",
            Val::Storage(_) => "storage",
            Val::Tensor(_) => "tensor",
            Val::Other(k) => k,
        }
    }

    fn usizes(&self) -> Option<Vec<usize>> {
        let Val::Tuple(t) = self else { return None };
        let int = |v: &Val| {
            if let Val::Int(i) = v {
                usize::try_from(*i).ok()
            } else {
                None
            }
        };
        t.iter().map(int).collect()
    }
}

/// A restricted pickle machine: the opcodes torch.save emits, no code execution.
struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<usize, Val>,
}

impl<'a> Unpickler<'a> {
    fn new(path: &'a Path, data: &'a [u8]) -> Self {
        Unpickler {
            path,
            data,
            pos: 0,
            stack: vec![],
            marks: vec![],
            memo: HashMap::new(),
        }
    }

    fn bad(&self, msg: impl Display) -> CheckpointError {
        corrupt(self.path, format!("data.pkl at byte {}: {msg}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let data = self.data;
        let Some(s) = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
        else {
            return Err(self.bad("unexpected end"));
        };
        self.pos += n;
        Ok(s)
    }

    /// An unsigned little-endian integer of n bytes (n ≤ 8).
    fn uint(&mut self, n: usize) -> Result<usize, CheckpointError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0, |acc, &x| (acc << 8) | x as usize))
    }

    /// A length-prefixed string (kept) or byte string (a placeholder).
    fn sized(&mut self, width: usize, text: bool) -> Result<Val, CheckpointError> {
        let n = self.uint(width)?;
        let b = self.take(n)?;
        Ok(if text {
            Val::Str(String::from_utf8_lossy(b).into_owned())
        } else {
            Val::Other("bytes")
        })
    }

    /// LONG1: a little-endian two's complement integer of n bytes.
    fn long1(&mut self) -> Result<Val, CheckpointError> {
        let n = self.uint(1)?;
        let b = self.take(n)?;
        let mut a = [if b.last().is_some_and(|&x| x >= 0x80) {
            0xff
        } else {
            0
        }; 8];
        a.get_mut(..n)
            .ok_or_else(|| self.bad("integer wider than 64 bits"))?
            .copy_from_slice(b);
        Ok(Val::Int(i64::from_le_bytes(a)))
    }

    fn line(&mut self) -> Result<String, CheckpointError> {
        let n = self.data[self.pos..].iter().position(|&b| b == b'\n');
        let n = n.ok_or_else(|| self.bad("unterminated line"))?;
        Ok(String::from_utf8_lossy(self.take(n + 1)?)
            .trim_end()
            .to_string())
    }

    fn pop(&mut self) -> Result<Val, CheckpointError> {
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Val>, CheckpointError> {
        let at = self
            .stack
            .len()
            .checked_sub(n)
            .ok_or_else(|| self.bad("stack underflow"))?;
        Ok(self.stack.split_off(at))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>, CheckpointError> {
        let mark = self.marks.pop().filter(|&m| m <= self.stack.len());
        let mark = mark.ok_or_else(|| self.bad("missing MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Val, CheckpointError> {
        self.stack.last().ok_or_else(|| self.bad("empty stack"))
    }

    fn pairs(&self, items: Vec<Val>) -> Result<Vec<(Val, Val)>, CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("odd number of dict items"));
        }
        Ok(items
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect())
    }

    /// GLOBAL: the allowlist. Everything else (os.system, eval, numpy…) is refused by name.
    fn global(&self, module: &str, name: &str) -> Result<Val, CheckpointError> {
        Ok(Val::Global(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", class) if Dtype::from_torch_storage(class).is_some() => {
                Global::Storage(Dtype::from_torch_storage(class).unwrap_or(Dtype::U8))
            }
            _ => {
                let global = format!("{module}.{name}");
                return Err(CheckpointError::Refused {
                    path: self.path.into(),
                    global,
                });
            }
        }))
    }

    /// REDUCE, for the allowlisted callables only.
    fn call(&self, f: Val, args: Val) -> Result<Val, CheckpointError> {
        let Val::Tuple(args) = args else {
            return Err(self.bad("REDUCE without an argument tuple"));
        };
        match (&f, args.as_slice()) {
            (Val::Global(Global::OrderedDict), []) => Ok(Val::Dict(Rc::default())),
            (Val::Global(Global::RebuildParameter), [t @ Val::Tensor(_), ..]) => Ok(t.clone()),
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            (
                Val::Global(Global::RebuildTensor),
                [Val::Storage(st), Val::Int(offset), size, stride, ..],
            ) => {
                let spec = TensorSpec {
                    key: st.0.clone(),
                    dtype: st.1,
                    offset: usize::try_from(*offset)
                        .map_err(|_| self.bad("negative storage offset"))?,
                    shape: size
                        .usizes()
                        .ok_or_else(|| self.bad("tensor size is not a tuple of ints"))?,
                    stride: stride
                        .usizes()
                        .ok_or_else(|| self.bad("stride is not a tuple of ints"))?,
                };
                Ok(Val::Tensor(Rc::new(spec)))
            }
            _ => Err(self.bad(format!(
                "unexpected call of a {} with {} arguments",
                f.kind(),
                args.len()
            ))),
        }
    }

    /// BINPERSID: torch's ('storage', <class>, key, location, numel) names a zip entry.
    fn persistent(&self, pid: Val) -> Result<Val, CheckpointError> {
        if let Val::Tuple(t) = &pid
            && let [
                Val::Str(tag),
                Val::Global(Global::Storage(dtype)),
                Val::Str(key),
                ..,
            ] = &t[..]
            && tag == "storage"
        {
            return Ok(Val::Storage(Rc::new((key.clone(), *dtype))));
        }
        Err(self.bad("persistent id is not a torch storage"))
    }

    fn run(mut self) -> Result<Val, CheckpointError> {
        loop {
            let op = self.take(1)?[0];
            let value = match op {
                0x80 | 0x95 => self.take(if op == 0x80 { 1 } else { 8 }).map(|_| None)?, // PROTO, FRAME
                b'(' => {
                    self.marks.push(self.stack.len());
                    None
                }
                b'}' => Some(Val::Dict(Rc::default())),
                b']' => Some(Val::List(Rc::default())),
                b')' => Some(Val::Tuple(Rc::default())),
                b'X' | b'T' => Some(self.sized(4, true)?), // BINUNICODE, BINSTRING
                0x8c | b'U' => Some(self.sized(1, true)?), // SHORT_BINUNICODE, SHORT_BINSTRING
                0x8d => Some(self.sized(8, true)?),        // BINUNICODE8
                b'C' => Some(self.sized(1, false)?),       // SHORT_BINBYTES
                b'B' => Some(self.sized(4, false)?),       // BINBYTES
                0x8e => Some(self.sized(8, false)?),       // BINBYTES8
                b'K' => Some(Val::Int(self.uint(1)? as i64)),
                b'M' => Some(Val::Int(self.uint(2)? as i64)),
                b'J' => Some(Val::Int(i64::from(self.uint(4)? as u32 as i32))),
                0x8a => Some(self.long1()?),
                b'G' => self.take(8).map(|_| Some(Val::Other("float")))?,
                b'N' => Some(Val::Other("None")),
                0x88 | 0x89 => Some(Val::Other("bool")),
                b't' => Some(Val::Tuple(Rc::new(self.pop_mark()?))),
                0x85..=0x87 => Some(Val::Tuple(Rc::new(self.pop_n(usize::from(op - 0x84))?))),
                b'l' => Some(Val::List(Rc::new(RefCell::new(self.pop_mark()?)))),
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        self.pop_n(1)?
                    } else {
                        self.pop_mark()?
                    };
                    let Val::List(l) = self.top()? else {
                        return Err(self.bad("APPEND to a non-list"));
                    };
                    l.borrow_mut().extend(items);
                    None
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    Some(Val::Dict(Rc::new(RefCell::new(self.pairs(items)?))))
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        self.pop_n(2)?
                    } else {
                        self.pop_mark()?
                    };
                    let pairs = self.pairs(items)?;
                    let Val::Dict(d) = self.top()? else {
                        return Err(self.bad("SETITEM on a non-dict"));
                    };
                    d.borrow_mut().extend(pairs);
                    None
                }
                b'q' | b'r' | 0x94 => {
                    // BINPUT, LONG_BINPUT, MEMOIZE
                    let key = if op == 0x94 {
                        self.memo.len()
                    } else {
                        self.uint(if op == b'q' { 1 } else { 4 })?
                    };
                    self.memo.insert(key, self.top()?.clone());
                    None
                }
                b'h' | b'j' => {
                    let key = self.uint(if op == b'h' { 1 } else { 4 })?;
                    Some(
                        self.memo
                            .get(&key)
                            .cloned()
                            .ok_or_else(|| self.bad("unknown memo key"))?,
                    )
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    Some(self.global(&module, &name)?)
                }
                0x93 => match (self.pop()?, self.pop()?) {
                    (Val::Str(name), Val::Str(module)) => Some(self.global(&module, &name)?),
                    _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                },
                b'R' => {
                    let (args, f) = (self.pop()?, self.pop()?);
                    Some(self.call(f, args)?)
                }
                // BUILD: an OrderedDict's attributes (state_dict's `_metadata`) are dropped.
                b'b' => match (self.pop()?, self.top()?) {
                    (_, Val::Dict(_)) => None,
                    _ => return Err(self.bad("BUILD on a non-dict")),
                },
                b'Q' => {
                    let pid = self.pop()?;
                    Some(self.persistent(pid)?)
                }
                b'0' => self.pop().map(|_| None)?,
                b'1' => self.pop_mark().map(|_| None)?,
                b'2' => Some(self.top()?.clone()),
                b'.' => return self.pop(),
                _ => {
                    return Err(unsupported(
                        self.path,
                        format!("data.pkl uses pickle opcode 0x{op:02x}"),
                    ));
                }
            };
            self.stack.extend(value);
        }
    }
}

/// One tensor to write, borrowed: safetensors serializes straight from it.
struct Out<'a>(Dtype, &'a [usize], &'a [u8]);

impl View for Out<'_> {
    fn dtype(&self) -> StDtype {
        self.0.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        self.1
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

/// Write beside the target, then rename: a crash never leaves a half-written valid-looking file.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    let tmp = path.with_file_name(format!(".{}.tmp{}", file_name(path), std::process::id()));
    let result = write(&tmp)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// transformers' shard names: `model-00001-of-00003.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    let middle = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"));
    middle
        .and_then(|n| n.split_once("-of-"))
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Write tensors as transformers does: one model.safetensors, or shards + index when above max_shard_bytes.
pub fn write_dir(
    dir: &Path,
    tensors: &[(String, Dtype, Vec<usize>, &[u8])],
    max_shard_bytes: u64,
) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut names = HashSet::new();
    // Greedy split in the given order, as huggingface_hub does; a tensor above the limit
    // gets a shard of its own.
    let (mut shards, mut shard, mut size) = (vec![], vec![], 0u64);
    for (name, dtype, shape, data) in tensors {
        let bad = |msg: String| CheckpointError::BadTensor {
            dir: dir.into(),
            tensor: name.clone(),
            msg,
        };
        if !names.insert(name) {
            return Err(bad("the name is given twice".into()));
        }
        let numel = shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d));
        if numel != Some(data.len()) {
            return Err(bad(format!(
                "{} bytes do not fit shape {shape:?} of {dtype:?}",
                data.len()
            )));
        }
        if size > 0 && size + data.len() as u64 > max_shard_bytes {
            shards.push(std::mem::take(&mut shard));
            size = 0;
        }
        size += data.len() as u64;
        shard.push((name, Out(*dtype, shape, data)));
    }
    shards.push(shard);
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let count = shards.len();
    let (single, index) = (
        dir.join("model.safetensors"),
        dir.join("model.safetensors.index.json"),
    );
    let (mut written, mut weight_map) = (Vec::new(), BTreeMap::new());
    for (i, shard) in shards.into_iter().enumerate() {
        let path = match count {
            1 => single.clone(),
            _ => dir.join(format!("model-{:05}-of-{count:05}.safetensors", i + 1)),
        };
        weight_map.extend(
            shard
                .iter()
                .map(|(name, _)| (name.to_string(), file_name(&path).to_string())),
        );
        let format = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        write_atomic(&path, |tmp| {
            safetensors::serialize_to_file(shard, format, tmp).map_err(io::Error::other)
        })?;
        written.push(path);
    }
    // A stale model.safetensors would shadow the new index, and a stale index the new file.
    let stale = if count > 1 { &single } else { &index };
    if stale.exists() {
        fs::remove_file(stale).map_err(io_err(stale))?;
    }
    if count > 1 {
        let total: usize = tensors.iter().map(|t| t.3.len()).sum();
        let json =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
        write_atomic(&index, |tmp| fs::write(tmp, text))?;
        written.push(index);
    }
    // Shards of an earlier, differently split save would confuse a reader of the directory.
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        if is_shard_name(file_name(&path)) && !written.contains(&path) {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(written)
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Made by tests/fixtures/checkpoints/make_checkpoints.py.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
    }

    fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> String {
        items.iter().map(name).collect::<Vec<_>>().join(" ")
    }

    fn error(dir: &str) -> String {
        read_dir(&fixtures().join(dir)).unwrap_err().to_string()
    }

    /// Every tensor of reference.json, by name: dtype, shape and each value.
    fn check_reference(tensors: &[RawTensor]) {
        let text = fs::read_to_string(fixtures().join("reference.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(tensors.len(), reference.as_object().unwrap().len());
        for t in tensors {
            let r = &reference[&t.name];
            let dtypes = [
                ("float32", Dtype::F32),
                ("bfloat16", Dtype::BF16),
                ("float16", Dtype::F16),
            ];
            let dtype = dtypes
                .iter()
                .find(|d| r["dtype"] == d.0)
                .map_or(Dtype::I64, |d| d.1);
            assert_eq!(t.dtype, dtype, "{}", t.name);
            assert_eq!(serde_json::json!(t.shape), r["shape"], "{}", t.name);
            // As f32: serde_json's default parsing may miss an f64 by one ulp.
            let want = r["values"].as_array().unwrap();
            let floats = want.iter().map(|v| v.as_f64().unwrap() as f32);
            let ints = want.iter().map(|v| v.as_i64().unwrap().to_le_bytes());
            match t.to_f32() {
                Some(v) => assert_eq!(v, floats.collect::<Vec<_>>(), "{}", t.name),
                None => assert_eq!(t.bytes(), ints.collect::<Vec<_>>().concat(), "{}", t.name),
            }
        }
    }

    #[test]
    fn reads_pytorch_bin_with_dtypes_tied_weights_and_views() {
        let tensors = read_dir(&fixtures().join("bin")).unwrap();
        check_reference(&tensors);
        let order = "f32 bf16 f16 i64 tied.a tied.b transposed row";
        assert_eq!(names(&tensors, |t| &t.name), order);
        assert!(
            tensors
                .iter()
                .all(|t| t.is_float() == (t.dtype != Dtype::I64))
        );
        // Tied weights share one mapped storage; only the transposed view is gathered.
        assert_eq!(tensors[4].bytes().as_ptr(), tensors[5].bytes().as_ptr());
        for t in &tensors {
            assert_eq!(
                matches!(t.data, Bytes::Owned(_)),
                t.name == "transposed",
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn reads_safetensors_and_shards_of_both_formats() {
        for dir in ["single", "sharded_st", "sharded_bin"] {
            check_reference(&read_dir(&fixtures().join(dir)).unwrap());
        }
        let files = checkpoint_files(&fixtures().join("sharded_st")).unwrap();
        let shards = "model-00001-of-00002.safetensors model-00002-of-00002.safetensors";
        assert_eq!(names(&files, |f| file_name(f)), shards);
        let single = read_file(&fixtures().join("single/model.safetensors")).unwrap();
        assert!(
            single
                .iter()
                .all(|t| matches!(t.data, Bytes::Mapped { .. }))
        );
    }

    #[test]
    fn refuses_malicious_pickle_by_name() {
        let err = error("evil");
        assert!(
            err.contains("evil/pytorch_model.bin: refuses to load `posix.system`: a"),
            "{err}"
        );
        assert!(
            err.contains("(save_pretrained(..., safe_serialization=True))"),
            "{err}"
        );
    }

    #[test]
    fn reports_legacy_missing_and_absent_checkpoints() {
        let err = error("nested");
        assert!(
            err.contains("pytorch_model.bin: `state_dict` is a dict, not a tensor;"),
            "{err}"
        );
        let err = error("legacy");
        assert!(
            err.contains("pytorch_model.bin: is not a zip archive but a legacy"),
            "{err}"
        );
        let err = error("missing_shard");
        let want = "index.json: names shard `model-00001-of-00002.safetensors`, which is missing";
        assert!(err.contains(want), "{err}");
        let err = error("does_not_exist");
        let want = "(looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin";
        assert!(err.contains(want), "{err}");
    }

    #[test]
    fn damaged_files_give_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("x.bin");
        let original = fs::read(fixtures().join("bin/pytorch_model.bin")).unwrap();
        for i in 0..original.len() {
            let mut flipped = original.clone();
            flipped[i] ^= 0xff;
            fs::write(&copy, &flipped).unwrap();
            let _ = read_file(&copy);
            fs::write(&copy, &original[..i]).unwrap();
            assert!(read_file(&copy).is_err());
        }
    }

    #[test]
    fn to_f32_reads_unaligned_mapped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw");
        fs::write(
            &path,
            [&[0u8][..], &1.5f32.to_le_bytes(), &(-2f32).to_le_bytes()].concat(),
        )
        .unwrap();
        // SAFETY: the file is this test's own and is not changed while mapped.
        let map = Arc::new(unsafe { Mmap::map(&File::open(&path).unwrap()) }.unwrap());
        let data = Bytes::Mapped { map, range: 1..9 };
        let t = RawTensor {
            name: "x".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data,
        };
        assert_eq!(t.to_f32().unwrap(), [1.5, -2.0]);
    }

    #[test]
    fn write_dir_round_trips_shards_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let f32s: Vec<u8> = (0..6)
            .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
            .collect();
        let bf16s = [
            half::bf16::from_f32(1.0).to_le_bytes(),
            half::bf16::from_f32(-3.0).to_le_bytes(),
        ];
        let ints = [7i64.to_le_bytes(), (-9i64).to_le_bytes()].concat();
        let tensors = [
            ("a.weight".to_string(), Dtype::F32, vec![2, 3], &f32s[..]),
            (
                "b.weight".to_string(),
                Dtype::BF16,
                vec![2],
                &bf16s.concat()[..],
            ),
            ("c.ids".to_string(), Dtype::I64, vec![2], &ints[..]),
            ("d.mask".to_string(), Dtype::Bool, vec![3], &[1u8, 0, 1][..]),
        ];
        let written = write_dir(dir.path(), &tensors, 24).unwrap();
        let files = "model-00001-of-00002.safetensors model-00002-of-00002.safetensors \
                     model.safetensors.index.json";
        assert_eq!(names(&written, |f| file_name(f)), files);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(&written[2]).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 47);
        assert_eq!(
            index["weight_map"]["a.weight"],
            "model-00001-of-00002.safetensors"
        );
        assert_eq!(
            index["weight_map"]["d.mask"],
            "model-00002-of-00002.safetensors"
        );
        let check = |dir: &Path| {
            let read = read_dir(dir).unwrap();
            // safetensors orders a file by dtype alignment, then name.
            let mut read: Vec<_> = read
                .iter()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.bytes()))
                .collect();
            read.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(read, tensors);
        };
        check(dir.path());
        python_loads(dir.path());

        // A tensor the index promises but its shard lacks is named.
        let mut bad = index.clone();
        bad["weight_map"]["ghost"] = "model-00002-of-00002.safetensors".into();
        fs::write(&written[2], bad.to_string()).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model-00002-of-00002.safetensors: lacks tensor `ghost`"),
            "{err}"
        );

        // Rewritten unsharded: the stale shards and index go, as with transformers.
        let written = write_dir(dir.path(), &tensors, 1 << 20).unwrap();
        assert_eq!(written, [dir.path().join("model.safetensors")]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        check(dir.path());
    }

    /// Python reads what write_dir wrote (skipped where python3 lacks torch or safetensors).
    fn python_loads(dir: &Path) {
        let script = "import json, sys, torch\nfrom safetensors.torch import load_file\n\
            d = sys.argv[1]; m = json.load(open(d + '/model.safetensors.index.json'))['weight_map']\n\
            sd = {k: v for f in sorted(set(m.values())) for k, v in load_file(d + '/' + f).items()}\n\
            assert set(sd) == set(m), sd.keys()\n\
            assert sd['a.weight'].tolist() == [[0, .5, 1], [1.5, 2, 2.5]]\n\
            assert sd['b.weight'].dtype == torch.bfloat16 and sd['b.weight'].tolist() == [1, -3]\n\
            assert sd['c.ids'].tolist() == [7, -9] and sd['d.mask'].tolist() == [True, False, True]\n";
        let run = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(dir)
            .output();
        let Ok(out) = run else {
            return eprintln!("skipped the Python check: no python3");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("ModuleNotFoundError") {
            return eprintln!("skipped the Python check: {stderr}");
        }
        assert!(out.status.success(), "{stderr}");
    }
}
