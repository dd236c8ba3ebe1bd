// Calls between accounts for the vela page (docs/api.md, "Calls"): call
// buttons on contacts, the incoming-call prompt (in every tab signed in to
// the account), the call view with chat, add-a-person and take-over, the
// history, and do-not-disturb. Loaded after the page's own script; uses its
// `account`, `api`, `join`, `leave` and `vela`, and gets the device socket's
// pushes through `window.velaCalls.onPush`.
'use strict';
(() => {
  const $ = (s) => document.querySelector(s);
  const el = (tag, props, ...kids) => {
    const e = Object.assign(document.createElement(tag), props || {});
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };
  // One id per tab: tells the tabs of one signed-in browser (one device) apart.
  const clientId = 'tab-' + Math.random().toString(36).slice(2, 10);
  const st = {
    calls: new Map(),     // call id -> call (ringing or in progress, this account's)
    ringing: new Map(),   // call id -> {call, caller}
    myCall: null,         // the call this tab is in
    notes: [],            // what happened, newest last: {call, what, reason}
    chat: new Map(),      // call id -> [message]
    history: [], nextBefore: null, missed: 0,
    settings: { dnd: false, allow: 'nobody' },
  };

  const me = () => (account.session ? account.session.account : null);
  const myDevice = () => (account.session ? account.session.device.id : null);
  const nameOf = (call, id) => {
    const m = (call.members || []).find((x) => x.account_id === id);
    return m ? m.display_name : String(id);
  };
  const others = (call) => (call.members || []).filter((m) => !me() || m.account_id !== me().id);
  const mine = (call) => (call.members || []).find((m) => me() && m.account_id === me().id);
  const note = (call, what, reason) => { st.notes.push({ call, what, reason: reason || null, at: Date.now() }); };

  // ---------- layout ----------
  const style = el('style', { textContent: `
    #incoming { position:fixed; left:50%; top:70px; transform:translateX(-50%); z-index:10; background:var(--panel);
      border:1px solid var(--accent); border-radius:12px; padding:16px 20px; display:flex; gap:12px; align-items:center;
      box-shadow:0 8px 30px rgba(0,0,0,.5); }
    #calls-box .call-line { display:flex; flex-direction:column; gap:6px; border:1px solid var(--line); border-radius:8px; padding:8px; }
    #calls-box .call-line .buttons { display:flex; gap:6px; flex-wrap:wrap; }
    #call-chat { display:flex; flex-direction:column; gap:4px; max-height:160px; overflow:auto; font-size:12px; }
    #call-history li { font-size:12px; }
    #call-history .outcome { color:var(--dim); }
    #call-history .missed, #call-history .busy { color:var(--bad); }
    .missed-badge { background:var(--bad); color:#fff; border-radius:8px; padding:0 6px; font-size:11px; margin-left:6px; }
    ul.people li button.call-btn { padding:2px 6px; }
  ` });
  document.head.append(style);
  const incoming = el('div', { id: 'incoming', hidden: true });
  document.body.append(incoming);
  const box = el('div', { className: 'row', id: 'calls-box' });
  const dnd = el('label', { style: 'flex-direction:row; align-items:center; gap:6px' },
    el('input', { type: 'checkbox', id: 'dnd-on' }), 'Do not disturb calls, except');
  const allow = el('select', { id: 'dnd-allow' },
    el('option', { value: 'nobody', textContent: 'nobody' }),
    el('option', { value: 'contacts', textContent: 'contacts' }),
    el('option', { value: 'favorites', textContent: 'favourites' }));
  box.append(el('h3', { textContent: 'Calls' }), el('div', { id: 'call-lines', className: 'row' }), dnd, allow,
    el('h3', {}, 'History', el('span', { id: 'missed-badge', className: 'missed-badge', hidden: true })),
    el('ul', { className: 'people', id: 'call-history' }),
    el('div', { className: 'buttons' },
      el('button', { id: 'history-more', type: 'button', textContent: 'More', hidden: true }),
      el('button', { id: 'missed-seen', type: 'button', textContent: 'Mark missed seen' })));
  const signedIn = $('#signed-in');
  if (signedIn) signedIn.append(box);
  $('#dnd-on').onchange = () => setSettings({ dnd: $('#dnd-on').checked }).catch(show);
  $('#dnd-allow').onchange = () => setSettings({ allow: $('#dnd-allow').value }).catch(show);
  $('#missed-seen').onclick = () => markMissedSeen().catch(show);
  $('#history-more').onclick = () => loadHistory(true).catch(show);

  function show(e) { const a = $('#auth-error'); if (a) a.textContent = e.message || String(e); }

  // Call buttons on every contact the page lists.
  function decorateContacts() {
    for (const li of document.querySelectorAll('#contacts li[data-account]')) {
      if (li.querySelector('.call-btn')) continue;
      const id = Number(li.dataset.account);
      const audio = el('button', { className: 'call-btn', type: 'button', title: 'Audio call', textContent: 'Call' });
      const video = el('button', { className: 'call-btn', type: 'button', title: 'Video call', textContent: 'Video' });
      audio.dataset.call = 'audio'; video.dataset.call = 'video';
      audio.onclick = () => startCall([id], false).catch(show);
      video.onclick = () => startCall([id], true).catch(show);
      li.append(audio, video);
    }
  }
  const contacts = $('#contacts');
  if (contacts) new MutationObserver(decorateContacts).observe(contacts, { childList: true });

  // ---------- rendering ----------
  function render() {
    decorateContacts();
    // The incoming prompt: the first call ringing here.
    const ring = [...st.ringing.values()][0];
    incoming.textContent = '';
    incoming.hidden = !ring;
    if (ring) {
      incoming.dataset.call = ring.call.id;
      const accept = el('button', { className: 'primary', id: 'incoming-accept', type: 'button', textContent: 'Accept' });
      const decline = el('button', { className: 'danger', id: 'incoming-decline', type: 'button', textContent: 'Decline' });
      accept.onclick = () => acceptCall(ring.call.id).catch(show);
      decline.onclick = () => declineCall(ring.call.id).catch(show);
      incoming.append(el('div', {}, el('b', { textContent: ring.caller.display_name }),
        ' is calling you' + (ring.call.video ? ' (video)' : ' (audio)') + '…'), accept, decline);
    }
    const lines = $('#call-lines');
    const typing = $('#call-chat-input');
    const draft = typing ? typing.value : '';
    const focused = typing && document.activeElement === typing;
    lines.textContent = '';
    for (const call of st.calls.values()) {
      const m = mine(call);
      if (!m || (m.state !== 'joined' && m.state !== 'ringing') || st.ringing.has(call.id)) continue;
      const line = el('div', { className: 'call-line' });
      line.dataset.call = call.id;
      const who = others(call).map((o) => o.display_name + ' (' + o.state + ')').join(', ');
      const here = st.myCall === call.id && vela.joined;
      const where = here ? 'in this tab' : m.device_id === myDevice() && st.myCall === call.id ? 'joining…' : 'on another device';
      line.append(el('div', { textContent: (call.video ? 'Video' : 'Audio') + ' call with ' + who + ' — ' + call.state + ', ' + where }));
      const buttons = el('div', { className: 'buttons' });
      if (!here && m.state === 'joined' && m.participant_id) {
        const t = el('button', { className: 'primary', type: 'button', textContent: 'Take over here' });
        t.dataset.action = 'take-over';
        t.onclick = () => takeOver(call.id).catch(show);
        buttons.append(t);
      }
      const hang = el('button', { className: 'danger', type: 'button', textContent: call.state === 'ringing' && call.caller === (me() || {}).id ? 'Cancel' : 'Hang up' });
      hang.onclick = () => hangUp(call.id).catch(show);
      buttons.append(hang);
      if (m.state === 'joined') {
        const add = el('select', {}, el('option', { value: '', textContent: 'Add…' }));
        for (const c of account.contacts.values()) {
          if (!(call.members || []).some((x) => x.account_id === c.id && (x.state === 'joined' || x.state === 'ringing'))) {
            add.append(el('option', { value: c.id, textContent: c.display_name }));
          }
        }
        add.onchange = () => { if (add.value) addToCall(call.id, [Number(add.value)]).catch(show); };
        buttons.append(add);
      }
      line.append(buttons);
      if (m.state === 'joined') {
        const chat = el('div', { id: 'call-chat' });
        for (const msg of st.chat.get(call.id) || []) chat.append(el('div', { textContent: msg.from.display_name + ': ' + msg.text }));
        const input = el('input', { placeholder: 'Message everyone in the call', id: 'call-chat-input' });
        input.onkeydown = (e) => { if (e.key === 'Enter' && input.value.trim()) { sendChat(call.id, input.value.trim()).catch(show); input.value = ''; } };
        input.value = draft;
        line.append(chat, input);
        if (focused) setTimeout(() => input.focus(), 0);
      }
      lines.append(line);
    }
    const last = st.notes[st.notes.length - 1];
    if (last && Date.now() - last.at < 8000) lines.append(el('div', { className: 'text', textContent: describe(last) }));
    // History.
    const list = $('#call-history');
    list.textContent = '';
    for (const r of st.history) {
      const names = (r.participants || []).map((p) => p.display_name).join(', ') || '?';
      const dur = r.duration_ms ? ' ' + Math.round(r.duration_ms / 1000) + ' s' : '';
      const li = el('li', {}, el('span', { className: 'who', textContent: (r.direction === 'outgoing' ? '↗ ' : '↙ ') + names + (r.video ? ' (video)' : '') }),
        el('span', { className: 'outcome ' + r.outcome, textContent: r.outcome + dur }));
      li.dataset.record = r.id; li.dataset.call = r.call_id; li.dataset.outcome = r.outcome;
      li.title = new Date(r.started_at).toLocaleString() + (r.device_id ? ' — device ' + r.device_id : '');
      list.append(li);
    }
    $('#history-more').hidden = !st.nextBefore;
    const badge = $('#missed-badge');
    badge.hidden = !st.missed; badge.textContent = st.missed ? st.missed + ' missed' : '';
    $('#dnd-on').checked = !!st.settings.dnd; $('#dnd-allow').value = st.settings.allow;
  }

  function describe(n) {
    const names = others(n.call).map((o) => o.display_name).join(', ');
    switch (n.what) {
      case 'answered_elsewhere': return 'Call from ' + names + ' answered elsewhere';
      case 'ended': return 'Call with ' + names + ' ended: ' + n.reason;
      default: return n.what + ' — ' + names;
    }
  }

  // ---------- pushes ----------
  function onPush(m) {
    const call = m.call;
    switch (m.type) {
      case 'ready': refresh().catch(() => {}); return;
      case 'call_ringing': st.calls.set(call.id, call); st.ringing.set(call.id, { call, caller: m.caller }); break;
      case 'call_outgoing': st.calls.set(call.id, call); if (st.myCall !== call.id) note(call, 'outgoing'); break;
      case 'call_answered': st.calls.set(call.id, call); break;
      case 'call_ringing_stopped':
        st.calls.set(call.id, call);
        if (st.ringing.delete(call.id) && !(m.device_id === myDevice() && m.client_id === clientId)) note(call, 'answered_elsewhere', m.reason);
        break;
      case 'call_declined': case 'call_updated': st.calls.set(call.id, call); break;
      case 'call_ended': {
        st.calls.delete(call.id);
        st.ringing.delete(call.id);
        note(call, 'ended', m.outcome);
        if (st.myCall === call.id) {
          st.myCall = null;
          if (vela.joined) leave();
        }
        break;
      }
      case 'call_message': {
        const list = st.chat.get(m.message.call_id) || [];
        list.push(m.message);
        st.chat.set(m.message.call_id, list);
        break;
      }
      case 'call_history':
        if (!st.history.some((r) => r.id === m.record.id)) st.history.unshift(m.record);
        break;
      case 'missed_calls': st.missed = m.count; break;
      case 'call_settings': st.settings = { dnd: m.dnd, allow: m.allow }; break;
      default: return;
    }
    render();
  }

  async function refresh() {
    if (!account.session) return;
    const [active, count, settings] = await Promise.all([
      api('GET', '/api/v1/calls/active'), api('GET', '/api/v1/calls/missed-count'), api('GET', '/api/v1/calls/settings'),
    ]);
    for (const c of active.calls) {
      st.calls.set(c.id, c);
      const m = mine(c);
      if (m && m.state === 'ringing' && !st.ringing.has(c.id)) {
        st.ringing.set(c.id, { call: c, caller: (c.members.find((x) => x.account_id === m.invited_by) || c.members[0]) });
      }
    }
    st.missed = count.count; st.settings = settings;
    await loadHistory(false);
  }

  async function loadHistory(more) {
    const q = more && st.nextBefore ? '?limit=20&before=' + st.nextBefore : '?limit=20';
    const page = await api('GET', '/api/v1/calls/history' + q);
    st.history = more ? st.history.concat(page.calls) : page.calls;
    st.nextBefore = page.next_before;
    render();
    return st.history;
  }

  // ---------- actions ----------
  async function enter(room, video, takeOver) {
    await join(room, '', '', { takeOver, audioOnly: !video });
  }

  async function startCall(accountIds, video) {
    if (!account.session) throw new Error('sign in to call');
    const r = await api('POST', '/api/v1/calls', { to: accountIds, video: !!video });
    st.calls.set(r.call.id, r.call);
    render();
    if (r.call.state === 'ended') return r.call;
    st.myCall = r.call.id;
    await enter(r.room, r.call.video);
    render();
    return r.call;
  }

  async function acceptCall(id) {
    const r = await api('POST', '/api/v1/calls/' + id + '/accept', { client_id: clientId });
    st.ringing.delete(id);
    st.calls.set(id, r.call);
    st.myCall = id;
    render();
    await enter(r.room, r.call.video);
    render();
    return r.call;
  }

  async function declineCall(id) {
    const r = await api('POST', '/api/v1/calls/' + id + '/decline', {});
    st.ringing.delete(id);
    render();
    return r.call;
  }

  async function hangUp(id) {
    id = id || st.myCall;
    const call = st.calls.get(id);
    const unanswered = call && call.state === 'ringing' && me() && call.caller === me().id;
    const r = await api('POST', '/api/v1/calls/' + id + (unanswered ? '/cancel' : '/leave'), {});
    if (st.myCall === id) { st.myCall = null; if (vela.joined) leave(); }
    render();
    return r.call;
  }

  // Moves this account's call (on another device or tab) here.
  async function takeOver(id) {
    const fresh = await api('GET', '/api/v1/calls/' + id);
    st.calls.set(id, fresh.call);
    st.chat.set(id, fresh.messages);
    const m = mine(fresh.call);
    if (!m || !m.participant_id) throw new Error('nothing to take over');
    st.myCall = id;
    await enter(fresh.call.room, fresh.call.video, m.participant_id);
    render();
    return fresh.call;
  }

  const addToCall = (id, accountIds) => api('POST', '/api/v1/calls/' + id + '/invite', { to: accountIds }).then((r) => { st.calls.set(id, r.call); render(); return r.call; });
  const sendChat = (id, text) => api('POST', '/api/v1/calls/' + id + '/messages', { text }).then((r) => r.message);
  const markMissedSeen = () => api('POST', '/api/v1/calls/missed/seen', {}).then((r) => { st.missed = r.count; render(); return r.count; });
  const setSettings = (s) => api('PUT', '/api/v1/calls/settings', s).then((r) => { st.settings = r; render(); return r; });

  window.velaCalls = { onPush };
  Object.assign(vela, {
    call: startCall, acceptCall, declineCall, hangUp, takeOver, addToCall, sendCallChat: sendChat, markMissedSeen,
    setCallSettings: setSettings, history: () => loadHistory(false),
    calls: () => ({
      clientId, myCall: st.myCall,
      ringing: [...st.ringing.values()].map((r) => ({ id: r.call.id, caller: r.caller.display_name, video: r.call.video })),
      calls: [...st.calls.values()], notes: st.notes.map((n) => ({ call: n.call.id, what: n.what, reason: n.reason })),
      missed: st.missed, chat: Object.fromEntries(st.chat),
      incomingShown: !incoming.hidden,
    }),
  });
  if (account.session) refresh().catch(() => {});
  let wasJoined = null;
  setInterval(() => { if (vela.joined !== wasJoined) { wasJoined = vela.joined; render(); } }, 300);
})();
