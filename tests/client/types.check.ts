// Typed code using the library, compiled (never run) by `tsc --noEmit`: the declarations must
// describe the module as an app uses it. A wrong use below is marked with @ts-expect-error.
import { Intercessor, IntercessorError, type Link, type Room } from '../../src/demo/intercessor.js';

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
  try {
    await Intercessor.join(url, 'zzz');
  } catch (error) {
    if (error instanceof IntercessorError) console.log(error.close?.reason);
  }
}
