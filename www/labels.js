// Labelled images for QAT, the page's side: a picked or dropped folder's files sorted into
// class folders, and which of them the page keeps. Which class a folder holds is the
// engine's to say (Session.labelFolders, train/labels.rs `ClassMap`), so that the page and the
// command line's --qat-labels match folder names the same way.

/**
 * @typedef {object} LabelPick
 * @property {string} root          the picked folder ('' when several folders were dropped)
 * @property {Map<string, {file: File, path: string}[]>} folders  class folder -> its files
 *   (those in its sub-folders too), in path order
 * @property {{file: File, path: string}[]} loose  files outside any class folder
 */

/**
 * Sorts files by class folder. `entries` are files with their path in what was picked or
 * dropped ("pets/tabby/1.png"). When every path starts with the same folder (a picked or
 * dropped folder), that folder is the root and its sub-folders are the classes; otherwise
 * (several folders dropped at once) the top folders are the classes. Hidden files and
 * folders (a name starting with '.') are left out.
 * @param {{file: File, path: string}[]} entries
 * @returns {LabelPick}
 */
export function sortIntoFolders(entries) {
  const parts = entries
    .map((e) => ({ ...e, parts: e.path.split('/').filter(Boolean) }))
    .filter((e) => e.parts.length && !e.parts.some((p) => p.startsWith('.')));
  const first = parts[0]?.parts[0];
  const shared = parts.length > 0 && parts.every((e) => e.parts.length > 1 && e.parts[0] === first);
  const root = shared ? first : '';
  const folders = new Map();
  const loose = [];
  for (const e of parts) {
    const rest = shared ? e.parts.slice(1) : e.parts;
    const entry = { file: e.file, path: e.path };
    if (rest.length < 2) {
      loose.push(entry);
      continue;
    }
    if (!folders.has(rest[0])) folders.set(rest[0], []);
    folders.get(rest[0]).push(entry);
  }
  const byPath = (a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  for (const list of folders.values()) list.sort(byPath);
  const sorted = new Map([...folders].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return { root, folders: sorted, loose };
}

/**
 * At most `max` items of the lists, taken one from each list in turn: when there are more
 * than the engine keeps, every class keeps some instead of the first folders taking all.
 * @template T
 * @param {T[][]} lists
 * @param {number} max
 * @returns {T[][]} for each list, the items taken (a prefix of it)
 */
export function takeInTurn(lists, max) {
  const taken = lists.map(() => []);
  let left = max;
  for (let i = 0; left > 0; i++) {
    let any = false;
    for (let k = 0; k < lists.length && left > 0; k++) {
      if (i < lists[k].length) {
        taken[k].push(lists[k][i]);
        left -= 1;
        any = true;
      }
    }
    if (!any) break;
  }
  return taken;
}

/**
 * The class names to match folder names against: the model's, when the page knows them (not
 * the "class i" it shows for a classifier it has no names for: folders are then named by
 * index, and the engine says so).
 * @param {string[]} names
 * @returns {string | undefined} one name per line
 */
export function classNamesText(names) {
  if (!names?.length || names.every((n, i) => n === `class ${i}`)) return undefined;
  return names.join('\n');
}
