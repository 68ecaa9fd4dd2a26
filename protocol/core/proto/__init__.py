"""Our own .proto files (field numbers from shared/protocol/SPEC.md §6) and their generated code.

The *_pb2.py/.pyi files are generated and committed; regenerate with
`.venv/bin/python tests/tools/gen_protos.py` (the suite checks they are current). Parse
untrusted bytes only through the helpers in the protocol modules that wrap protobuf's
DecodeError into ours.
"""
