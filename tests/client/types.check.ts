// Typed code using the library, compiled (never run) by `tsc --noEmit`: the declarations must
// describe the module as an app uses it. A wrong use below is marked with @ts-expect-error.
import { Intercessor, IntercessorError, type Link, type Room, type RoomState } from '../../src/demo/intercessor.js';

export async function hostAndJoin(url: string): Promise<void> {
  const room: Room = await Intercessor.host(url, { passphrase: 'secret', queueLimit: 10 });
  const code: string = room.code;
  const iceServers: RTCIceServer[] = room.iceServers;
  room.on('peerjoined', ({ id }) => {
    room.send(id, 'WELCOME', { hello: true });
    const pc: RTCPeerConnection = room.peerConnection(id, { iceServers });
    pc.createDataChannel('chat');
  });
  room.on('message', ({ from, type, message }) => console.log(from, type, message));
  room.on('close', ({ code, reason, error }) => console.log(code, reason.toUpperCase(), error?.code));
  room.on('reconnected', ({ replayed, gap }) => console.log(replayed + 1, gap));
  // @ts-expect-error: a host names the guest it sends to
  room.send('OFFER', {});

  const link: Link = await Intercessor.join(url, Intercessor.normalizeCode(code));
  const stop: () => void = link.on('error', (error: IntercessorError) => console.log(error.code, error.detail));
  stop();
  link.send('HELLO_HOST', null);
  link.peerConnection().createDataChannel('chat');
  // @ts-expect-error: no such event
  link.on('kicked', () => {});
  link.leave();

  // Host controls, and a knocking guest.
  const locked: Room = await Intercessor.host(url, { locked: true, knock: true });
  locked.on('knock', ({ id, info }) => {
    if (info === 'Mallory') locked.deny(id, 'not today');
    else locked.admit(id);
  });
  locked.on('knockgone', ({ id, reason }) => console.log(id, reason === 'timeout'));
  locked.on('peergone', ({ id, reason }) => reason === 'kicked' && console.log(id));
  const state: RoomState = await locked.setRoom({ locked: false });
  const waiting: string[] = state.waiting;
  locked.on('room', ({ locked, knock }) => console.log(locked && knock, waiting));
  const kicked: boolean = locked.kick('someone', 'be nice');
  locked.kick('someone');
  await locked.setRoom();
  // @ts-expect-error: settings are booleans
  locked.setRoom({ locked: 'yes' });
  const knocker: Link = await Intercessor.join(url, locked.code, { name: 'Ada' });
  const isWaiting: boolean = knocker.waiting;
  knocker.on('admitted', () => console.log(kicked, isWaiting));
  knocker.on('close', ({ reason }) => {
    if (reason === 'kicked' || reason === 'denied' || reason === 'locked' || reason === 'knock-timeout') console.log(reason);
  });
  const fresh: RTCIceServer[] = await knocker.refreshIce();
  knocker.on('iceservers', ({ iceServers }) => console.log(iceServers.length, fresh.length));
  await locked.refreshIce();
  // @ts-expect-error: only the host commands the room
  knocker.kick('someone');
  // @ts-expect-error: a name is for joining, not hosting
  await Intercessor.host(url, { name: 'Host' });
  try {
    await Intercessor.join(url, 'zzz');
  } catch (error) {
    if (error instanceof IntercessorError) console.log(error.close?.reason);
  }
}
