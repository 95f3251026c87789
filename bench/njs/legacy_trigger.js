// bench/njs/legacy_trigger.js — the do-it-yourself peer of pusher-cutover
// that bench/throughput.sh --scenario njs measures: what a team would write
// in nginx's own JavaScript (njs, Debian libnginx-mod-http-js) instead of
// the product, for the deprecated trigger alone.
//
//   POST /apps/{id}/channels/{channel}/events?name=…[&socket_id=…]&auth_…
//
// is verified (spec A.2: HMAC-SHA256 over "POST\n{raw path}\n{the query
// without auth_signature, keys lower-cased, sorted, unescaped}", the
// body_md5 of the raw body, auth_key, auth_version 1.0 and the ±600 s
// timestamp window), checked against the limits the upstream enforces
// (event name, channel name, data size, socket_id), translated into
// POST /apps/{id}/events with the JSON body {name, channels, data,
// socket_id}, re-signed with a fresh timestamp and forwarded through the
// internal location /_upstream/ (proxy_pass with upstream keep-alive, the
// fastest way njs has: ngx.fetch opens a connection per call). The caller
// gets the legacy answer, 202 "202 ACCEPTED\n", after the upstream's 2xx,
// and the upstream's status and body otherwise. Nothing that failed a
// check is forwarded.
//
// The server block sets the app: $app_id, $app_key, $app_secret (the
// upstream is signed with the same credentials).

const crypto = require('crypto');

const WINDOW_SECS = 600;
const MAX_DATA_BYTES = 10240;
const MAX_NAME_BYTES = 200;
const CHANNEL_RE = /^[A-Za-z0-9_\-=@,.;]{1,164}$/;
const SOCKET_ID_RE = /^\d+\.\d+$/;
const PATH_RE = /^\/apps\/([^/]+)\/channels\/([^/]+)\/events$/;

function hmacHex(secret, text) {
    return crypto.createHmac('sha256', secret).update(text).digest('hex');
}

function md5Hex(bytes) {
    return crypto.createHash('md5').update(bytes).digest('hex');
}

// Compares two strings in time independent of where they differ.
function sameString(a, b) {
    if (typeof a !== 'string' || a.length !== b.length) {
        return false;
    }
    let diff = 0;
    for (let i = 0; i < a.length; i++) {
        diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    }
    return diff === 0;
}

function refuse(r, status, message) {
    r.headersOut['Content-Type'] = 'text/plain';
    r.return(status, message + '\n');
}

async function trigger(r) {
    if (r.method !== 'POST') {
        return refuse(r, 405, 'only POST triggers an event');
    }
    const rawPath = r.variables.request_uri.split('?')[0];
    const m = PATH_RE.exec(rawPath);
    if (!m || m[1] !== r.variables.app_id) {
        return refuse(r, 404, 'unknown app');
    }
    const args = r.args;
    const keys = Object.keys(args);
    const canonical = [];
    for (let i = 0; i < keys.length; i++) {
        const v = args[keys[i]];
        if (typeof v !== 'string') {
            return refuse(r, 400, 'repeated query parameter ' + keys[i]);
        }
        if (keys[i].toLowerCase() !== 'auth_signature') {
            canonical.push([keys[i].toLowerCase(), v]);
        }
    }
    canonical.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const toSign = 'POST\n' + rawPath + '\n' + canonical.map((kv) => kv[0] + '=' + kv[1]).join('&');
    if (args.auth_key !== r.variables.app_key || args.auth_version !== '1.0') {
        return refuse(r, 401, 'unknown auth_key or auth_version');
    }
    const ts = Number(args.auth_timestamp);
    if (!/^\d+$/.test(args.auth_timestamp || '') || Math.abs(Date.now() / 1000 - ts) > WINDOW_SECS) {
        return refuse(r, 401, 'auth_timestamp outside the 600 s window');
    }
    if (!sameString(args.auth_signature, hmacHex(r.variables.app_secret, toSign))) {
        return refuse(r, 401, 'invalid signature');
    }
    const raw = r.requestBuffer;
    if (raw === undefined) {
        return refuse(r, 413, 'body too large to verify');
    }
    if (!sameString(args.body_md5, md5Hex(raw))) {
        return refuse(r, 401, 'body_md5 does not match the body');
    }
    // Verified: now the limits the upstream would refuse.
    const name = args.name;
    if (!name || Buffer.byteLength(name) > MAX_NAME_BYTES) {
        return refuse(r, 400, 'name missing or over 200 bytes');
    }
    let channel;
    try {
        channel = decodeURIComponent(m[2]);
    } catch (e) {
        return refuse(r, 400, 'channel name is not valid percent-encoding');
    }
    if (!CHANNEL_RE.test(channel)) {
        return refuse(r, 400, 'invalid channel name');
    }
    if (raw.length > MAX_DATA_BYTES) {
        return refuse(r, 413, 'event data over 10240 bytes');
    }
    if (args.socket_id !== undefined && !SOCKET_ID_RE.test(args.socket_id)) {
        return refuse(r, 400, 'invalid socket_id');
    }
    const event = { name: name, channels: [channel], data: r.requestText };
    if (args.socket_id !== undefined) {
        event.socket_id = args.socket_id;
    }
    const body = JSON.stringify(event);
    const query = 'auth_key=' + r.variables.app_key + '&auth_timestamp=' + Math.floor(Date.now() / 1000)
        + '&auth_version=1.0&body_md5=' + md5Hex(body);
    const path = '/apps/' + r.variables.app_id + '/events';
    const signature = hmacHex(r.variables.app_secret, 'POST\n' + path + '\n' + query);
    let reply;
    try {
        reply = await r.subrequest('/_upstream' + path, {
            method: 'POST',
            args: query + '&auth_signature=' + signature,
            body: body,
        });
    } catch (e) {
        return refuse(r, 502, 'upstream unreachable');
    }
    if (reply.status >= 200 && reply.status < 300) {
        r.headersOut['Content-Type'] = 'text/plain';
        return r.return(202, '202 ACCEPTED\n');
    }
    r.return(reply.status >= 400 ? reply.status : 502, reply.responseText || '');
}

export default { trigger };
