//! Finding the URL, caption, key and kept columns of an input.

use serde_json::{Map, Value};

use crate::error::InputError;
use crate::read::{Field, Picked};
use crate::row::ReadOptions;

/// URL column names tried when none is given: LAION spells it `URL`, most
/// JSON dumps `url`, some crawls `image_url`.
pub(crate) const URL_DEFAULTS: [&str; 3] = ["url", "URL", "image_url"];

/// Caption column names tried when none is given (`TEXT` is LAION's).
pub(crate) const CAPTION_DEFAULTS: [&str; 3] = ["caption", "TEXT", "text"];

/// Conceptual Captions TSV has the caption first and the URL second.
const HEADERLESS_URL: usize = 1;
const HEADERLESS_CAPTION: usize = 0;

/// Column names listed in an error message before the rest is summed up;
/// a wide Parquet schema would otherwise flood the terminal.
const LISTED_COLUMNS: usize = 40;

/// Positions of the wanted columns in a header, schema or headerless record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Positions {
    pub url: usize,
    pub caption: Option<usize>,
    pub key: Option<usize>,
    pub kept: Vec<usize>,
}

impl Positions {
    /// Looks the options' columns up among `names` (a header or schema).
    pub fn by_name(names: &[String], opts: &ReadOptions, label: &str) -> Result<Self, InputError> {
        let lookup = Lookup { names, label };

        let url = match &opts.url_col {
            Some(name) => lookup.named("URL", name)?,
            None => lookup
                .first_default(&URL_DEFAULTS)
                .ok_or_else(|| InputError::NoUrlColumn {
                    label: label.to_string(),
                    tried: URL_DEFAULTS.join(", "),
                    available: list_names(names),
                })?,
        };

        let caption = match &opts.caption_col {
            Some(name) => Some(lookup.named("caption", name)?),
            None => lookup.first_default(&CAPTION_DEFAULTS),
        };

        let key = opts
            .key_col
            .as_ref()
            .map(|name| lookup.named("key", name))
            .transpose()?;
        let kept = opts
            .keep_cols
            .iter()
            .map(|name| lookup.named("kept", name))
            .collect::<Result<_, _>>()?;

        Ok(Positions {
            url,
            caption,
            key,
            kept,
        })
    }

    /// Reads the options' columns as 0-based indices, for files without a
    /// header row.
    pub fn by_index(opts: &ReadOptions, label: &str) -> Result<Self, InputError> {
        let index = |role: &'static str, spec: &str| {
            spec.trim()
                .parse::<usize>()
                .map_err(|_| InputError::ColumnNotIndex {
                    label: label.to_string(),
                    role,
                    name: spec.to_string(),
                })
        };

        let url = opts
            .url_col
            .as_deref()
            .map_or(Ok(HEADERLESS_URL), |s| index("URL", s))?;
        let caption = opts
            .caption_col
            .as_deref()
            .map_or(Ok(HEADERLESS_CAPTION), |s| index("caption", s))?;
        let key = opts
            .key_col
            .as_deref()
            .map(|s| index("key", s))
            .transpose()?;
        let kept = opts
            .keep_cols
            .iter()
            .map(|s| index("kept", s))
            .collect::<Result<_, _>>()?;

        Ok(Positions {
            url,
            caption: Some(caption),
            key,
            kept,
        })
    }

    /// Returns every position used, for Parquet column projection.
    pub fn all(&self) -> Vec<usize> {
        let mut all = vec![self.url];
        all.extend(self.caption);
        all.extend(self.key);
        all.extend(&self.kept);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Copies the wanted cells out of one record's fields; a position past
    /// the end gives an absent cell.
    pub fn pick(&self, fields: &[String]) -> Picked {
        let cell = |i: usize| {
            fields
                .get(i)
                .map_or(Field::Absent, |f| Field::Text(f.clone()))
        };

        Picked {
            url: cell(self.url),
            caption: self.caption.map_or(Field::Absent, cell),
            key: self.key.map_or(Field::Absent, cell),
            kept: self.kept.iter().map(|&i| cell(i)).collect(),
        }
    }
}

/// Name lookups that report a missing name with the names on offer.
struct Lookup<'a> {
    names: &'a [String],
    label: &'a str,
}

impl Lookup<'_> {
    fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn named(&self, role: &'static str, name: &str) -> Result<usize, InputError> {
        self.position(name)
            .ok_or_else(|| InputError::MissingColumn {
                label: self.label.to_string(),
                role,
                name: name.to_string(),
                available: list_names(self.names),
            })
    }

    fn first_default(&self, defaults: &[&str]) -> Option<usize> {
        defaults.iter().find_map(|name| self.position(name))
    }
}

/// Names for an error message: all of them, or the first ones and a count.
fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".to_string();
    }

    let first_names: Vec<&str> = names
        .iter()
        .take(LISTED_COLUMNS)
        .map(String::as_str)
        .collect();
    let rest = names.len().saturating_sub(LISTED_COLUMNS);
    match rest {
        0 => first_names.join(", "),
        _ => format!("{} and {rest} more", first_names.join(", ")),
    }
}

/// The wanted columns of JSON objects, looked up by name in every object.
///
/// JSON has no schema, so defaults are tried per object, and a name absent
/// from one object gives an absent cell. The first object is checked like a
/// header, see [`JsonColumns::check_first`].
#[derive(Debug, Clone)]
pub(crate) struct JsonColumns {
    opts: ReadOptions,
    label: String,
}

impl JsonColumns {
    pub fn new(opts: &ReadOptions, label: &str) -> Self {
        JsonColumns {
            opts: opts.clone(),
            label: label.to_string(),
        }
    }

    /// Checks the first object's keys as if they were a header, so that a
    /// misspelt column name stops the input at once instead of marking
    /// every row.
    pub fn check_first(&self, object: &Map<String, Value>) -> Result<(), InputError> {
        let keys: Vec<String> = object.keys().cloned().collect();
        Positions::by_name(&keys, &self.opts, &self.label).map(|_| ())
    }

    /// Copies the wanted cells out of one object. A column may serve two
    /// roles (say key and kept), so nothing is taken out of the object.
    pub fn pick(&self, object: &Map<String, Value>) -> Picked {
        let named = |name: &String| json_field(object.get(name.as_str()));

        let url = match &self.opts.url_col {
            Some(name) => named(name),
            None => json_field(first_present(object, &URL_DEFAULTS)),
        };
        let caption = match &self.opts.caption_col {
            Some(name) => named(name),
            None => json_field(first_present(object, &CAPTION_DEFAULTS)),
        };

        Picked {
            url,
            caption,
            key: self.opts.key_col.as_ref().map_or(Field::Absent, named),
            kept: self.opts.keep_cols.iter().map(named).collect(),
        }
    }
}

fn first_present<'a>(object: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|name| object.get(*name))
}

/// Converts a JSON value to a cell: strings as they are, null as absent, anything
/// else as its JSON text.
pub(crate) fn json_field(value: Option<&Value>) -> Field {
    match value {
        None | Some(Value::Null) => Field::Absent,
        Some(Value::String(s)) => Field::Text(s.clone()),
        Some(other) => Field::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_follow_their_order() {
        let opts = ReadOptions::default();

        let laion = Positions::by_name(&names(&["SAMPLE_ID", "URL", "TEXT"]), &opts, "x").unwrap();
        let both = Positions::by_name(&names(&["URL", "url", "text"]), &opts, "x").unwrap();

        assert_eq!((laion.url, laion.caption), (1, Some(2)));
        assert_eq!((both.url, both.caption), (1, Some(2)));
    }

    #[test]
    fn missing_caption_default_is_no_caption() {
        let opts = ReadOptions::default();

        let found = Positions::by_name(&names(&["image_url", "w"]), &opts, "x").unwrap();

        assert_eq!(found.url, 0);
        assert_eq!(found.caption, None);
    }

    #[test]
    fn long_column_lists_are_summed_up() {
        let many: Vec<String> = (0..45).map(|i| format!("c{i}")).collect();

        let listed = list_names(&many);

        assert!(listed.starts_with("c0, c1,"), "{listed}");
        assert!(listed.ends_with("c39 and 5 more"), "{listed}");
    }

    #[test]
    fn projection_is_sorted_and_unique() {
        let positions = Positions {
            url: 3,
            caption: Some(0),
            key: Some(3),
            kept: vec![5, 0],
        };

        assert_eq!(positions.all(), vec![0, 3, 5]);
    }
}
