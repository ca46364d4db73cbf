//! Just enough of a BTF reader to find the byte offset of a struct member
//! in the running kernel (`/sys/kernel/btf/vmlinux`): Rust BPF gets no CO-RE
//! relocations, so the few kernel struct fields the TCP programs read
//! (`tcp_sock.bytes_received`, `sk_buff.cb`, ...) are located here at
//! start-up and handed to them through their config map.
//!
//! Format: `Documentation/bpf/btf.rst` (header, type section, string
//! section; type ids start at 1).

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset; `None` for bitfields (not addressable by byte).
    bit_offset: Option<u32>,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union with its members.
    Composite(Vec<Member>),
    /// typedef/const/volatile/restrict/type tag: refers to another type.
    Alias(u32),
    Other,
}

/// The parsed type graph of one BTF blob.
pub struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct name -> type id (the first definition with members).
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("no header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (or foreign endianness)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut btf = Self {
            types: vec![Type::Other],
            strings,
            structs: HashMap::new(),
        };
        let mut at = 0;
        while at < type_data.len() {
            at = btf.parse_type(type_data, at)?;
        }
        Ok(btf)
    }

    /// Parses the type at `at`, returns where the next one starts.
    fn parse_type(&mut self, d: &[u8], at: usize) -> Result<usize, BtfError> {
        let name_off = u32_at(d, at)?;
        let info = u32_at(d, at + 4)?;
        let size_or_type = u32_at(d, at + 8)?;
        let (vlen, kind, kind_flag) = (
            (info & 0xffff) as usize,
            (info >> 24) & 0x1f,
            info >> 31 == 1,
        );
        let body = at + 12;
        let (ty, extra) = match kind {
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = body + i * 12;
                    let offset = u32_at(d, m + 8)?;
                    let bitfield = kind_flag && (offset >> 24) != 0;
                    let bits = if kind_flag {
                        offset & 0xff_ffff
                    } else {
                        offset
                    };
                    members.push(Member {
                        name_off: u32_at(d, m)?,
                        type_id: u32_at(d, m + 4)?,
                        bit_offset: (!bitfield).then_some(bits),
                    });
                }
                if kind == KIND_STRUCT && vlen > 0 {
                    let name = self.name(name_off).to_owned();
                    let id = self.types.len() as u32;
                    self.structs.entry(name).or_insert(id);
                }
                (Type::Composite(members), vlen * 12)
            }
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                (Type::Alias(size_or_type), 0)
            }
            // int, var, decl tag: one u32; array: btf_array.
            1 | 14 | 17 => (Type::Other, 4),
            3 => (Type::Other, 12),
            // enum, func proto: vlen x 8; datasec, enum64: vlen x 12.
            6 | 13 => (Type::Other, vlen * 8),
            15 | 19 => (Type::Other, vlen * 12),
            // ptr, fwd, func, float.
            2 | 7 | 12 | 16 => (Type::Other, 0),
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        self.types.push(ty);
        Ok(body + extra)
    }

    fn name(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// Follows aliases to the struct/union members of `id`, if any.
    fn members(&self, mut id: u32) -> Option<&[Member]> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Composite(m) => return Some(m),
                Type::Alias(next) => id = *next,
                Type::Other => return None,
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (as C does).
    #[must_use]
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = *self.structs.get(name)?;
        self.find(id, member, 0)
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in self.members(id)? {
            let name = self.name(m.name_off);
            if name == member {
                return m.bit_offset.filter(|b| b % 8 == 0).map(|b| b / 8);
            }
            if name.is_empty()
                && let Some(bits) = m.bit_offset
                && let Some(inner) = self.find(m.type_id, member, depth + 1)
            {
                return Some(bits / 8 + inner);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { struct { short x; short y; }; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0y\0short\0".to_vec();
        let s = |name: &str| -> u32 {
            let hay = String::from_utf8_lossy(&strings).into_owned();
            hay.find(&format!("\0{name}\0")).map_or(0, |i| i as u32 + 1)
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            for v in [name, (kind << 24) | vlen, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_ne_bytes());
            }
        };
        ty(s("int"), 1, 0, 4, &[32]); // 1: int
        ty(s("short"), 1, 0, 2, &[16]); // 2: short
        ty(0, KIND_STRUCT, 2, 4, &[s("x"), 2, 0, s("y"), 2, 16]); // 3: anon struct
        ty(0, KIND_UNION, 1, 4, &[0, 3, 0]); // 4: anon union
        ty(s("outer"), KIND_STRUCT, 2, 8, &[s("a"), 1, 0, 0, 4, 32]); // 5
        let mut out = Vec::new();
        for v in [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    /// Members are found directly and through anonymous unions and structs.
    #[test]
    fn finds_nested_members() {
        let btf = Btf::parse(&blob()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "x"), Some(4));
        assert_eq!(btf.member_offset("outer", "y"), Some(6));
        assert_eq!(btf.member_offset("outer", "z"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
    }

    /// The running kernel's BTF (when present) has the fields the TCP
    /// programs read, at plausible offsets.
    #[test]
    fn kernel_has_the_tcp_fields() {
        let Ok(btf) = Btf::kernel() else { return };
        let cb = btf.member_offset("sk_buff", "cb").unwrap_or(0);
        assert!((8..256).contains(&cb), "sk_buff.cb at {cb}");
        assert_eq!(btf.member_offset("tcp_skb_cb", "seq"), Some(0));
        assert_eq!(btf.member_offset("tcp_skb_cb", "tcp_gso_segs"), Some(8));
        let received = btf.member_offset("tcp_sock", "bytes_received").unwrap_or(0);
        let acked = btf.member_offset("tcp_sock", "bytes_acked").unwrap_or(0);
        assert!(received > 1000 && acked > 1000, "{received} {acked}");
    }

    /// Garbage is an error, not a panic.
    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]).is_err());
    }
}
