"""Generated gRPC code for the Voxtral Realtime contract (proto/voxtral/realtime/v1/realtime.proto).

Do not edit: regenerate with `python scripts/gen_proto.py`.
"""
