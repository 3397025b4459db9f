// Drag and drop anywhere on the page: shows the overlay (body.dragging) while files are
// dragged over, and hands the dropped files to a callback, folders walked (hidden files
// skipped), with each file's path in what was dropped and the element it was dropped on (so a
// part of the page can take drops of its own). Keyboard users have the file pickers instead.

/**
 * @param {(files: File[], where: {paths: Map<File, string>, target: EventTarget | null}) => void | Promise<void>} onFiles
 *   paths: "folder/sub/name.png" for files inside a dropped folder, else the file's name
 */
export function installDropZone(onFiles) {
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes('Files');
  const leave = () => {
    depth = 0;
    document.body.classList.remove('dragging');
  };
  document.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) leave();
  });
  document.addEventListener('drop', async (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    leave();
    const target = event.target;
    const paths = new Map();
    await onFiles(await droppedFiles(event.dataTransfer, paths), { paths, target });
  });
}

/**
 * The dropped files, folders walked; `paths` gets each file's path in what was dropped. The
 * entries are taken before the first await: a DataTransfer is only readable during its event.
 */
async function droppedFiles(dataTransfer, paths) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) {
    const files = [...dataTransfer.files];
    for (const f of files) paths.set(f, f.name);
    return files;
  }
  const files = [];
  const walk = async (entry) => {
    if (entry.name.startsWith('.')) return;
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      // fullPath is "/dropped/folder/name.png": relative to the drop, as webkitRelativePath is
      // to a picked folder.
      paths.set(file, entry.fullPath.replace(/^\//, ''));
      files.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const e of batch) await walk(e);
      }
    }
  };
  for (const e of entries) await walk(e);
  return files;
}
