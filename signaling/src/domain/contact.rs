//! The network address book: per-account contacts with versions (for
//! conflict detection) and revisions (for incremental sync).
//!
//! Every change to an account's address book bumps that account's revision
//! by one and stamps the changed entry with it; a deletion leaves a
//! tombstone. So "changes since revision N" is every entry whose revision is
//! above N, tombstones included. Each entry also has a version, bumped on
//! each edit: an update names the version it was based on and is refused
//! (409, with the current entry) when that is not the current version.

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;
use crate::domain::ids::{AccountId, ContactId};

/// Most phone numbers (and, separately, e-mail addresses) on one entry.
const MAX_VALUES: usize = 20;
/// Most groups on one entry.
const MAX_GROUPS: usize = 50;
/// Longest notes, in characters.
const MAX_NOTES_CHARS: usize = 4000;

/// A phone number or e-mail address with an optional label ("mobile", "work").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labeled {
    /// What kind of number or address it is; may be empty.
    #[serde(default)]
    pub label: String,
    /// The number or address.
    pub value: String,
}

/// The editable fields of an address book entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactFields {
    /// The name shown for the entry.
    pub display_name: String,
    /// Phone numbers.
    pub phones: Vec<Labeled>,
    /// E-mail addresses.
    pub emails: Vec<Labeled>,
    /// Groups the entry belongs to ("family", "work").
    pub groups: Vec<String>,
    /// The account of this person on this server, if they have one.
    pub linked_account: Option<AccountId>,
    /// Marked as a favourite.
    pub favorite: bool,
    /// Free-form notes.
    pub notes: String,
}

/// An address book entry, or the tombstone of a deleted one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    /// The entry's id.
    pub id: ContactId,
    /// Bumped by every edit; an update names the version it was based on.
    pub version: i64,
    /// The account revision of the entry's last change.
    pub revision: i64,
    /// A tombstone: the entry was deleted at `revision`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The fields (absent on a tombstone).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub fields: Option<ContactFields>,
    /// The username of `linked_account`, for display.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_username: Option<String>,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
    /// When it last changed (ms since the epoch).
    pub updated_at: i64,
}

/// The body of a create (`POST`) or update (`PUT`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    /// The version the update is based on (required by `PUT`, refused by `POST`).
    #[serde(default)]
    pub version: Option<i64>,
    /// The name shown.
    pub display_name: String,
    /// Phone numbers.
    #[serde(default)]
    pub phones: Vec<Labeled>,
    /// E-mail addresses.
    #[serde(default)]
    pub emails: Vec<Labeled>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The linked account's id: the own account, a mutual contact's, or
    /// the one the entry already links.
    #[serde(default)]
    pub linked_account: Option<AccountId>,
    /// The account to link, by username (any account; instead of
    /// `linked_account`).
    #[serde(default)]
    pub linked_username: Option<String>,
    /// Favourite.
    #[serde(default)]
    pub favorite: bool,
    /// Notes.
    #[serde(default)]
    pub notes: String,
}

fn check_label(field: &str, label: &str) -> Result<String, Invalid> {
    let l = label.trim();
    if l.chars().count() > 32 || l.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must be at most 32 characters without control characters",
        ));
    }
    Ok(l.to_owned())
}

/// Checks a phone number: 3 to 32 characters of digits, spaces and `+ - ( ) .`,
/// with 3 to 20 digits.
fn check_phone(field: &str, raw: &str) -> Result<String, Invalid> {
    let v = raw.trim();
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let ok = (3..=32).contains(&v.len())
        && (3..=20).contains(&digits)
        && v.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(Invalid::new(
            field,
            "must be a phone number: 3 to 20 digits, with only spaces and + - ( ) . besides",
        ))
    }
}

/// Checks an e-mail address: `local@domain.tld`, at most 254 characters, no spaces.
fn check_email(field: &str, raw: &str) -> Result<String, Invalid> {
    let v = raw.trim();
    let ok = v.len() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && match v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if ok {
        Ok(v.to_owned())
    } else {
        Err(Invalid::new(field, "must be an e-mail address"))
    }
}

fn check_values(
    field: &str,
    values: &[Labeled],
    check: fn(&str, &str) -> Result<String, Invalid>,
) -> Result<Vec<Labeled>, Invalid> {
    if values.len() > MAX_VALUES {
        return Err(Invalid::new(field, format!("at most {MAX_VALUES} entries")));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(Labeled {
                label: check_label(&format!("{field}[{i}].label"), &v.label)?,
                value: check(&format!("{field}[{i}].value"), &v.value)?,
            })
        })
        .collect()
}

impl ContactBody {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<ContactFields, Invalid> {
        let name = self.display_name.trim();
        let n = name.chars().count();
        if n == 0 || n > 128 || name.chars().any(char::is_control) {
            return Err(Invalid::new(
                "display_name",
                "must be 1 to 128 characters without control characters",
            ));
        }
        let phones = check_values("phones", &self.phones, check_phone)?;
        let emails = check_values("emails", &self.emails, check_email)?;
        if self.groups.len() > MAX_GROUPS {
            return Err(Invalid::new(
                "groups",
                format!("at most {MAX_GROUPS} groups"),
            ));
        }
        let mut groups: Vec<String> = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter().enumerate() {
            let g = g.trim();
            let n = g.chars().count();
            if n == 0 || n > 64 || g.chars().any(char::is_control) {
                return Err(Invalid::new(
                    &format!("groups[{i}]"),
                    "must be 1 to 64 characters without control characters",
                ));
            }
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_owned());
            }
        }
        if self.linked_account.is_some() && self.linked_username.is_some() {
            return Err(Invalid::new(
                "linked_username",
                "give linked_account or linked_username, not both",
            ));
        }
        if self.notes.chars().count() > MAX_NOTES_CHARS {
            return Err(Invalid::new(
                "notes",
                format!("must be at most {MAX_NOTES_CHARS} characters"),
            ));
        }
        Ok(ContactFields {
            display_name: name.to_owned(),
            phones,
            emails,
            groups,
            linked_account: self.linked_account,
            favorite: self.favorite,
            notes: self.notes.clone(),
        })
    }
}

/// A filter for listing the address book.
#[derive(Debug, Default, Clone)]
pub struct ContactFilter {
    /// Only entries whose display name contains this (case-insensitive for ASCII).
    pub q: Option<String>,
    /// Only favourites (`true`) or only the others (`false`).
    pub favorite: Option<bool>,
    /// Only entries in this group.
    pub group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str) -> ContactBody {
        ContactBody {
            version: None,
            display_name: name.into(),
            phones: vec![],
            emails: vec![],
            groups: vec![],
            linked_account: None,
            linked_username: None,
            favorite: false,
            notes: String::new(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            body(" ").validate().expect_err("empty").field,
            "display_name"
        );
        let mut b = body("Ann");
        b.phones = vec![
            Labeled {
                label: "mobile".into(),
                value: "+1 (555) 010-0000".into(),
            },
            Labeled {
                label: String::new(),
                value: "call me".into(),
            },
        ];
        assert_eq!(
            b.validate().expect_err("bad phone").field,
            "phones[1].value"
        );
        let mut b = body("Ann");
        b.emails = vec![Labeled {
            label: "work".into(),
            value: "ann@example".into(),
        }];
        assert_eq!(
            b.validate().expect_err("bad email").field,
            "emails[0].value"
        );
        let mut b = body("Ann");
        b.groups = vec!["work".into(), " work ".into(), "".into()];
        assert_eq!(b.validate().expect_err("empty group").field, "groups[2]");
        b.groups.pop();
        assert_eq!(b.validate().expect("ok").groups, vec!["work"]);
        let mut b = body("Ann");
        b.notes = "x".repeat(MAX_NOTES_CHARS + 1);
        assert_eq!(b.validate().expect_err("long notes").field, "notes");
    }

    #[test]
    fn tombstones_serialize_without_fields() {
        let t = Contact {
            id: ContactId(4),
            version: 3,
            revision: 9,
            deleted: true,
            fields: None,
            linked_username: None,
            created_at: 1,
            updated_at: 2,
        };
        let v = serde_json::to_value(&t).expect("json");
        assert_eq!(v["deleted"], true);
        assert!(v.get("display_name").is_none());
        let mut live = t;
        live.deleted = false;
        live.fields = Some(body("Ann").validate().expect("ok"));
        let v = serde_json::to_value(&live).expect("json");
        assert!(v.get("deleted").is_none());
        assert_eq!(v["display_name"], "Ann");
        assert_eq!(v["linked_account"], serde_json::Value::Null);
    }
}
