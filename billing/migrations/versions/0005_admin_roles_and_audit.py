"""Admin keys with roles, and the append-only audit log of every change

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# The application never updates or deletes an audit entry; these make the database refuse it too (a superuser
# can still drop them: the host's root is outside the threat model).
SQLITE_GUARDS = [f"CREATE TRIGGER audit_log_no_{verb} BEFORE {verb.upper()} ON audit_log "
                 "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END" for verb in ("update", "delete")]
POSTGRES_GUARDS = [
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
]


def upgrade() -> None:
    op.create_table(
        'admin_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('key_prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_keys')),
        sa.UniqueConstraint('key_hash', name=op.f('uq_admin_keys_key_hash')),
        sa.UniqueConstraint('name', name=op.f('uq_admin_keys_name')),
    )
    op.create_table(
        'audit_log',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('actor', sa.String(length=160), nullable=False),
        sa.Column('actor_role', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=160), nullable=False),
        sa.Column('before', sa.JSON(), nullable=True),
        sa.Column('after', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    )
    for statement in POSTGRES_GUARDS if op.get_bind().dialect.name == "postgresql" else SQLITE_GUARDS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_append_only() CASCADE")
    op.drop_table('audit_log')
    op.drop_table('admin_keys')
