"""Prompts of kinds absent from every file the shipped routers were trained on: source code, another script, an
opaque token, a machine log. Shared by the familiarity tests and bench/router_eval.py."""

STRANGE_KINDS = {
    "source code": [
        "def f(xs):\n    return {k: v for k, v in zip(xs[::2], xs[1::2]) if k not in SEEN}\nprint(f(sys.argv[1:]))",
        "SELECT u.id, COUNT(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id HAVING COUNT(o.id) > 3;",
        "#include <stdio.h>\nint main(void) { for (int i = 0; i < 10; i++) printf(\"%d\\n\", i * i); return 0; }",
        "const x = await fetch(`/api/v2/items?id=${id}`).then(r => r.json()); console.log(x?.data?.[0]);",
    ],
    "Chinese": [
        "请把下面这段话翻译成英文，并解释其中每个成语的出处和含义。",
        "我们公司下个月要搬到新的办公室，请帮我写一封通知全体员工的邮件。",
        "为什么天空是蓝色的？请用小学生能听懂的话解释。",
    ],
    "tokens and logs": [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "2024-03-01T12:00:03Z ERROR [pool-3-thread-7] c.a.s.Worker - java.lang.NullPointerException at c.a.s.Worker.run(Worker.java:88)",
        "0x7ffd5fbff8a0 0x00000001 0x7ffd5fbff8c8 0x55e4c1a2b149 0x7f3a2e0a1083 0x7ffd5fbff9b8",
    ],
}
