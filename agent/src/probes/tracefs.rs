//! Tracepoint record layouts, read from tracefs at start-up: Rust BPF code
//! gets no CO-RE relocations, and layouts differ between kernel versions, so
//! offsets are never hard-coded.

use std::{collections::HashMap, path::PathBuf};

use super::preflight::TRACEFS;

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("tracepoint {category}:{name} is not available on this kernel ({path}: {source})")]
    Missing {
        category: String,
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {category}:{name} has no field {field} (its format file: {path})")]
    NoField {
        category: String,
        name: String,
        field: String,
        path: PathBuf,
    },
}

/// Parsed `format` file of one tracepoint.
#[derive(Debug, Clone)]
pub struct TracepointFormat {
    category: String,
    name: String,
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl TracepointFormat {
    /// Reads `/sys/kernel/tracing/events/<category>/<name>/format`.
    pub fn load(category: &str, name: &str) -> Result<Self, FormatError> {
        let path = PathBuf::from(TRACEFS)
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Missing {
            category: category.to_owned(),
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            category: category.to_owned(),
            name: name.to_owned(),
            path,
            fields: parse(&text),
        })
    }

    /// The field called `field`, or an error naming the tracepoint.
    pub fn field(&self, field: &str) -> Result<Field, FormatError> {
        self.fields
            .get(field)
            .copied()
            .ok_or_else(|| FormatError::NoField {
                category: self.category.clone(),
                name: self.name.clone(),
                field: field.to_owned(),
                path: self.path.clone(),
            })
    }
}

/// Parses `field:TYPE NAME[N];\toffset:O;\tsize:S;\tsigned:X;` lines.
#[must_use]
pub fn parse(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name).to_owned();
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.insert(name, Field { offset, size });
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: tcp_probe\nID: 2273\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[28];\toffset:8;\tsize:28;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:128;\tsize:8;\tsigned:0;\n\
\tfield:__u32 srtt;\toffset:100;\tsize:4;\tsigned:0;\n\nprint fmt: \"x\"\n";

    /// Array and pointer fields parse with their offsets and sizes.
    #[test]
    fn parses_fields() {
        let f = parse(FORMAT);
        assert_eq!(
            f["saddr"],
            Field {
                offset: 8,
                size: 28
            }
        );
        assert_eq!(
            f["skaddr"],
            Field {
                offset: 128,
                size: 8
            }
        );
        assert_eq!(
            f["srtt"],
            Field {
                offset: 100,
                size: 4
            }
        );
        assert_eq!(f.len(), 4);
    }

    /// Garbage yields no fields rather than a panic.
    #[test]
    fn garbage_is_empty() {
        assert!(parse("field:\nfield:int x;offset:zz;size:4;\n\u{0}").is_empty());
    }
}
