// The app's own JavaScript. It owns the livekit-client Room: it creates it, connects it, shows who
// is in it, plays sound on a click, and disconnects it. The page's Python (main.py) only draws the
// avatar's face, from the Room this file hands it as `window.appRoom`.
import { Room, RoomEvent } from "./vendor/livekit-client/livekit-client.esm.mjs";

const $ = (id) => document.getElementById(id);

// 1. The app creates its Room. Two options matter to the player: singlePeerConnection off (as in
//    the player's own rooms: its transform is reliable on a receive-only connection) and
//    adaptiveStream off (livekit-client's default: the motion track is never shown in a <video>,
//    and adaptive streaming would pause it).
const room = new Room({ singlePeerConnection: false, adaptiveStream: false });
window.appRoom = room; // main.py reads it: this module runs before PyScript starts Python

// 2. main.py made `LiveKitProvider(room=window.appRoom)`, then announced itself: from then on the
//    player sees every peer connection the room opens.
const player = new Promise((resolve) => {
  if (window.avatarPlayer) resolve(window.avatarPlayer);
  else window.addEventListener("avatarplayer-ready", () => resolve(window.avatarPlayer), { once: true });
});

// The app's own UI on its room: its state, who is here, the sound button.
function showParticipants() {
  const you = room.localParticipant.identity;
  const names = [...(you ? [`${you} (you)`] : []), ...[...room.remoteParticipants.values()].map((p) => p.identity)];
  $("participants").replaceChildren(...names.map((name) => Object.assign(document.createElement("li"), { textContent: name })));
}
room
  .on(RoomEvent.ConnectionStateChanged, (state) => { $("room-state").textContent = state; showParticipants(); })
  .on(RoomEvent.ParticipantConnected, showParticipants)
  .on(RoomEvent.ParticipantDisconnected, showParticipants)
  .on(RoomEvent.AudioPlaybackStatusChanged, () => { $("sound").hidden = room.canPlaybackAudio; });

async function join(url, token) {
  $("join").disabled = true;
  try {
    const avatar = await player; // 3. the player holds the room before it connects
    await room.connect(url, token); // 4. the app connects its room
    await avatar.start(); //           5. the player starts reading it (player.connect(), no arguments)
    $("leave").disabled = false;
  } catch (error) {
    $("room-state").textContent = `could not join: ${error.message ?? error}`;
    $("join").disabled = false;
  }
}

async function leave() {
  $("leave").disabled = true;
  await (await player).stop(); // the player lets go (player.disconnect(): the room stays connected)
  await room.disconnect(); //     the app disconnects its room
  $("join").disabled = false;
}

const params = new URLSearchParams(location.search);
const [url, token] = [params.get("url"), params.get("token")];
$("join").addEventListener("click", () => join(url, token));
$("leave").addEventListener("click", leave);
$("sound").addEventListener("click", () => room.startAudio()); // a click lets the browser play sound
$("join").disabled = !(url && token);
if (url && token) join(url, token);
else $("room-state").textContent = "add ?url=wss://…&token=… to this page's address";
