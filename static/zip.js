// A store-only (no compression) zip writer: PNGs are already compressed, so storing them costs nothing
// and keeps this small enough to read. Format: PKWARE APPNOTE, local headers + central directory + end record.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the zip/PNG polynomial) of a byte array. */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** "data:image/png;base64,…" → its bytes. */
export function dataUrlBytes(url) {
  const bin = atob(url.slice(url.indexOf(",") + 1));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function dosDateTime(d) {
  const time = (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1);
  const date = ((d.getFullYear() - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate();
  return [time, date];
}

/**
 * @param {{name: string, data: Uint8Array}[]} files
 * @returns {Blob} an application/zip blob
 */
export function zipBlob(files, when = new Date()) {
  const enc = new TextEncoder();
  const [time, date] = dosDateTime(when);
  const parts = [];
  const central = [];
  let offset = 0;
  // The local header and the central directory share this run of fields, two bytes apart.
  const writeEntryFields = (view, at, crc, size, nameLength) => {
    view.setUint16(at, 0x0800, true); // names are UTF-8
    view.setUint16(at + 2, 0, true); // method: stored
    view.setUint16(at + 4, time, true);
    view.setUint16(at + 6, date, true);
    view.setUint32(at + 8, crc, true);
    view.setUint32(at + 12, size, true); // compressed = uncompressed: stored
    view.setUint32(at + 16, size, true);
    view.setUint16(at + 20, nameLength, true);
  };
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = crc32(f.data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true); // version needed: 2.0
    writeEntryFields(local, 6, crc, f.data.length, name.length);
    local.setUint16(28, 0, true);
    parts.push(local, name, f.data);

    const cd = new DataView(new ArrayBuffer(46));
    cd.setUint32(0, 0x02014b50, true);
    cd.setUint16(4, 20, true);
    cd.setUint16(6, 20, true);
    writeEntryFields(cd, 8, crc, f.data.length, name.length);
    // extra, comment, disk, internal and external attributes stay 0
    cd.setUint32(42, offset, true);
    central.push(cd, name);
    offset += 30 + name.length + f.data.length;
  }
  const cdSize = central.reduce((s, p) => s + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, cdSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}
