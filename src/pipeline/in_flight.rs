//! Rows that share an image. Lists such as COCO's name one image on several rows, each with its
//! own caption. While such rows are in flight together, the image is downloaded, decoded and
//! captioned once for all of them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use super::RowId;

/// The source of a row's image: the URL as the input gives it, and the folder that relative
/// paths resolve against, because the same relative path in two lists names two files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub url: String,
    pub base_dir: Option<PathBuf>,
}

/// A row waiting for an image, with the web caption the filter scores for it.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub row: RowId,
    /// The row's own web caption, which the filter scores against the shared image.
    pub web_caption: Option<String>,
}

/// Whether a row started a new fetch or joined one already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// No row with this image is in flight: the caller fetches it.
    First,
    /// Another row's fetch also serves this row.
    Shared,
}

/// Images being fetched, prepared or captioned, each with the rows waiting for it. An entry
/// leaves when its result is handed to its rows, so the table contains at most the rows in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    waiting: Mutex<HashMap<ImageKey, Vec<Waiter>>>,
}

impl InFlight {
    /// Adds `waiter` to the rows waiting for `image`.
    pub fn join(&self, image: &ImageKey, waiter: Waiter) -> Joined {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);

        match waiting.get_mut(image) {
            Some(rows) => {
                rows.push(waiter);
                Joined::Shared
            }
            None => {
                waiting.insert(image.clone(), vec![waiter]);
                Joined::First
            }
        }
    }

    /// Removes `image` and returns every row waiting for it. A row with the same image that
    /// arrives later starts a fetch of its own.
    pub fn take(&self, image: &ImageKey) -> Vec<Waiter> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.remove(image).unwrap_or_default()
    }

    /// Images in flight.
    pub fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(row: usize, caption: &str) -> Waiter {
        Waiter {
            row: RowId { shard: 0, row },
            web_caption: Some(caption.into()),
        }
    }

    #[test]
    fn second_row_shares_and_take_empties() {
        let table = InFlight::default();
        let image = ImageKey {
            url: "http://127.0.0.1/a.jpg".into(),
            base_dir: None,
        };

        assert_eq!(table.join(&image, waiter(0, "a dog")), Joined::First);
        assert_eq!(table.join(&image, waiter(1, "a brown dog")), Joined::Shared);
        let rows = table.take(&image);

        assert_eq!(rows.iter().map(|w| w.row.row).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(rows[1].web_caption.as_deref(), Some("a brown dog"));
        assert!(table.is_empty(), "the entry left with its rows");
        assert_eq!(
            table.join(&image, waiter(2, "later")),
            Joined::First,
            "a later row fetches again"
        );
    }

    #[test]
    fn same_relative_path_in_two_folders_is_two_images() {
        let table = InFlight::default();
        let first = ImageKey {
            url: "a.jpg".into(),
            base_dir: Some("/lists/one".into()),
        };
        let second = ImageKey {
            url: "a.jpg".into(),
            base_dir: Some("/lists/two".into()),
        };

        assert_eq!(table.join(&first, waiter(0, "x")), Joined::First);
        assert_eq!(table.join(&second, waiter(1, "y")), Joined::First);
        assert_eq!(table.len(), 2);
    }
}
