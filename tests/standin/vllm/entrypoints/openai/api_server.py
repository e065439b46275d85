"""``python -m vllm.entrypoints.openai.api_server``: the stand-in server (tests/standin/standin_server.py)."""

from standin_server import main

if __name__ == "__main__":
    main()
