"""WebRTC and media: peers and their offers, output tracks and encoders, the control data channel, liveness, the changes made to aiortc."""
