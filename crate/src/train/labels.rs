//! Class labels for QAT from a folder per class (the CLI's `--qat-labels DIR`): which output
//! index a folder name means.
//!
//! - The model must be a classifier: a single output of class scores (`loss::classifier`,
//!   the test the distillation loss uses to choose its KL).
//! - With class names (a labels file: one name per line, line `i` naming output index `i`),
//!   a folder matches a line case-insensitively, `_` standing for a space (folder names rarely
//!   hold spaces), and also any comma-separated part of a line ("tench, Tinca tinca"). The file
//!   must name exactly as many classes as the output has: a file for another head (1001
//!   classes with a background class, say) would shift every label by one without a word.
//! - A folder may always be named by the class index itself ("281").
//! - Anything else is an error naming the folder; so is a name that two lines share.
//!
//! No file system here (the library also builds for the browser): the CLI lists the folders.

use std::collections::HashMap;

use super::loss::classifier;
use crate::ir::Graph;
use crate::{Error, Result};

/// Folder names to class indices for one classifier.
#[derive(Clone, Debug)]
pub struct ClassMap {
    classes: usize,
    output: String,
    names: Vec<String>,
    index: HashMap<String, Vec<usize>>,
}

/// Lower case, `_` as a space, runs of spaces as one.
fn normalise(name: &str) -> String {
    name.replace('_', " ").split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl ClassMap {
    /// For the classifier output of `g` (else an error listing its outputs), with the class
    /// names of a labels file's text when given.
    pub fn new(g: &Graph, labels: Option<&str>) -> Result<ClassMap> {
        let (output, classes, _) = classifier(g)?;
        let output = g.values[output].name.clone();
        let mut map = ClassMap { classes, output, names: Vec::new(), index: HashMap::new() };
        if let Some(text) = labels {
            let mut lines: Vec<&str> = text.lines().map(str::trim).collect();
            while lines.last() == Some(&"") {
                lines.pop();
            }
            if lines.len() != classes {
                return Err(Error::Invalid(format!(
                    "the labels file names {} classes, the classifier output '{}' has {classes}: it is not this model's",
                    lines.len(),
                    map.output
                )));
            }
            for (i, line) in lines.iter().enumerate() {
                let mut keys = vec![normalise(line)];
                keys.extend(line.split(',').map(normalise).filter(|k| !k.is_empty()));
                keys.dedup();
                for k in keys {
                    let entry = map.index.entry(k).or_default();
                    if !entry.contains(&i) {
                        entry.push(i);
                    }
                }
            }
            map.names = lines.into_iter().map(String::from).collect();
        }
        Ok(map)
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The name of a class (with a labels file).
    pub fn name(&self, class: usize) -> Option<&str> {
        self.names.get(class).map(String::as_str)
    }

    /// The class a folder named `folder` holds.
    pub fn class_of(&self, folder: &str) -> Result<usize> {
        let bad = |msg: String| Err(Error::Invalid(format!("class folder '{folder}': {msg}")));
        match self.index.get(&normalise(folder)).map(Vec::as_slice) {
            Some([i]) => return Ok(*i),
            Some(several) => {
                let lines: Vec<String> = several.iter().map(|i| i.to_string()).collect();
                return bad(format!("the labels file gives this name to classes {}; name the folder by the class index instead", lines.join(" and ")));
            }
            None => {}
        }
        if let Ok(i) = folder.trim().parse::<usize>() {
            return if i < self.classes {
                Ok(i)
            } else {
                bad(format!("class index {i} is out of range: the output '{}' has {} classes (0..{})", self.output, self.classes, self.classes - 1))
            };
        }
        if self.names.is_empty() {
            bad(format!(
                "without class names (a labels file), class folders must be named by the class index (0..{}) of the output '{}'",
                self.classes - 1,
                self.output
            ))
        } else {
            bad(format!(
                "no class of the labels file has this name (matched ignoring case, '_' as a space), and it is not a class index (0..{})",
                self.classes - 1
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier_graph(classes: usize) -> Graph {
        let mut g = Graph::default();
        let x = g.add_value("logits", vec![1, classes]);
        g.inputs = vec![x];
        g.outputs = vec![x];
        g
    }

    #[test]
    fn folders_map_by_name_or_index() {
        let g = classifier_graph(4);
        let map = ClassMap::new(&g, Some("tench, Tinca tinca\ngreat white shark\ncrane\ncrane\n\n")).unwrap();
        assert_eq!(map.class_of("Great_White_Shark").unwrap(), 1);
        assert_eq!(map.class_of("great white  shark").unwrap(), 1);
        assert_eq!(map.class_of("TINCA TINCA").unwrap(), 0);
        assert_eq!(map.class_of("tench").unwrap(), 0);
        assert_eq!(map.class_of("3").unwrap(), 3);
        assert_eq!(map.name(1), Some("great white shark"));
        let e = map.class_of("crane").unwrap_err().to_string();
        assert!(e.contains("'crane'") && e.contains("2 and 3"), "{e}");
        let e = map.class_of("kitten").unwrap_err().to_string();
        assert!(e.contains("class folder 'kitten'") && e.contains("no class"), "{e}");
        let e = map.class_of("4").unwrap_err().to_string();
        assert!(e.contains("'4'") && e.contains("out of range"), "{e}");

        let plain = ClassMap::new(&g, None).unwrap();
        assert_eq!(plain.class_of("2").unwrap(), 2);
        let e = plain.class_of("tench").unwrap_err().to_string();
        assert!(e.contains("'tench'") && e.contains("named by the class index (0..3)"), "{e}");

        let e = ClassMap::new(&g, Some("a\nb\nc\n")).unwrap_err().to_string();
        assert!(e.contains("names 3 classes") && e.contains("'logits' has 4"), "{e}");
    }
}
