# -*- coding: utf-8 -*-
"""Read everything about a table that a conversion must carry over or must refuse over.

Every query runs with search_path = '' (set by pgpart_db.connect), so the deparsed
expressions and definitions name every user object with its schema.  All values are
plain JSON types: the description is stored in the journal and returned to Ansible.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

KEY_TYPES = ('timestamp with time zone', 'timestamp without time zone', 'date')


def find_relation(session, schema, name):
    """(oid, relkind) of schema.name, or None."""
    row = session.one(
        "SELECT c.oid::bigint AS oid, c.relkind::text AS relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name))
    return (row['oid'], row['relkind']) if row else None


def relation_exists(session, schema, name):
    return find_relation(session, schema, name) is not None


def read_table(session, schema, name):
    """A dict describing schema.name, or None when it does not exist."""
    found = find_relation(session, schema, name)
    if not found:
        return None
    oid = found[0]
    info = session.one(TABLE_SQL, (oid,))
    info['columns'] = session.fetch(COLUMNS_SQL, (oid,))
    info['constraints'] = session.fetch(CONSTRAINTS_SQL, (oid,))
    info['indexes'] = session.fetch(INDEXES_SQL, (oid,))
    info['triggers'] = session.fetch(TRIGGERS_SQL, (oid,))
    info['policies'] = session.fetch(POLICIES_SQL, (oid,))
    info['acl'] = table_acl(session, schema, name)
    info['column_acl'] = session.fetch(COLUMN_ACL_SQL, (oid,))
    info['publications'] = session.fetch(PUBLICATIONS_SQL, (oid,))
    info['incoming_fks'] = session.fetch(INCOMING_FK_SQL, (oid,))
    info['views'] = session.fetch(VIEWS_SQL, (oid,))
    info['functions'] = session.fetch(ATOMIC_FUNCTIONS_SQL, (oid,)) if session.major >= 14 else []
    info['rowtype_users'] = session.fetch(ROWTYPE_USERS_SQL, (oid,))
    info['other_dependents'] = session.fetch(OTHER_DEPENDENTS_SQL, {'oid': oid})
    info['statistics'] = session.fetch(STATISTICS_SQL, (oid,))
    info['rules'] = session.fetch(RULES_SQL, (oid,))
    info['sequences'] = session.fetch(SEQUENCES_SQL, (oid,))
    info['primary_key'] = next((c for c in info['constraints'] if c['type'] == 'p'), None)
    return info


def table_acl(session, schema, name):
    """[{grantee, privilege, grantable}] of a table (grantee 'PUBLIC' for everyone), owner left out."""
    return session.fetch(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END AS grantee, "
        "a.privilege_type::text AS privilege, a.is_grantable AS grantable "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a "
        "WHERE n.nspname = %s AND c.relname = %s AND a.grantee <> c.relowner ORDER BY 1, 2", (schema, name))


def regclass_text(session, schema, name):
    """schema.name quoted by the server so that ::regclass finds exactly that relation."""
    return session.scalar("SELECT format('%%I.%%I', %s::text, %s::text)", (schema, name))


def column(info, name):
    return next((c for c in info['columns'] if c['name'] == name), None)


def copy_columns(info):
    """Columns whose values are copied: everything but generated columns, in table order."""
    return [c['name'] for c in info['columns'] if not c['generated']]


def user_triggers(info):
    """Triggers the application defined (not pgpart's sync triggers)."""
    return [t for t in info['triggers'] if not t['ours']]


TABLE_SQL = """
SELECT c.oid::bigint AS oid, n.nspname::text AS schema, c.relname::text AS name,
       c.relkind::text AS relkind, c.relpersistence::text AS persistence,
       pg_get_userbyid(c.relowner)::text AS owner,
       c.relrowsecurity AS rls_enabled, c.relforcerowsecurity AS rls_forced,
       coalesce(c.reloptions, '{}')::text[] AS reloptions,
       c.relreplident::text AS replica_identity,
       (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = c.oid AND i.indisreplident) AS replica_identity_index,
       obj_description(c.oid, 'pg_class') AS comment,
       c.relispartition AS is_partition,
       EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid) AS has_inheritance,
       c.reltuples::bigint AS row_estimate,
       pg_total_relation_size(c.oid)::bigint AS total_bytes,
       pg_relation_size(c.oid)::bigint AS heap_bytes,
       (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint AS heap_blocks,
       c.reltype::bigint AS reltype,
       pg_has_role(current_user, c.relowner, 'MEMBER') AS current_user_owns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = %s
"""

COLUMNS_SQL = """
SELECT a.attnum::int AS attnum, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0
            THEN (SELECT format('%%I.%%I', cn.nspname, co.collname) FROM pg_collation co
                  JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation)
       END AS collation,
       a.attnotnull AS not_null,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS "default",
       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END AS generation_expr,
       a.attidentity::text AS identity,
       a.attgenerated::text AS generated,
       col_description(a.attrelid, a.attnum) AS comment,
       nullif(a.attstattarget, -1)::int AS statistics_target,
       a.attstorage::text AS storage, t.typstorage::text AS type_storage
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

CONSTRAINTS_SQL = """
SELECT con.conname::text AS name, con.contype::text AS type,
       pg_get_constraintdef(con.oid) AS definition,
       con.convalidated AS validated, con.connoinherit AS no_inherit,
       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
                '{}') AS columns,
       (SELECT relname::text FROM pg_class WHERE oid = con.conindid) AS index_name,
       con.condeferrable AS deferrable,
       obj_description(con.oid, 'pg_constraint') AS comment
FROM pg_constraint con
WHERE con.conrelid = %s AND con.contype IN ('p', 'u', 'x', 'c', 'f')
ORDER BY con.contype, con.conname
"""

INDEXES_SQL = """
SELECT ic.oid::bigint AS oid, ic.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
       i.indisprimary AS is_primary, i.indisunique AS is_unique, i.indisvalid AS is_valid,
       (SELECT conname::text FROM pg_constraint WHERE conindid = i.indexrelid AND conrelid = i.indrelid
         AND contype IN ('p', 'u', 'x')) AS constraint_name,
       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE k.attnum > 0 AND k.ord <= i.indnkeyatts), '{}') AS key_columns,
       i.indexprs IS NOT NULL AS has_expressions,
       i.indpred IS NOT NULL AS is_partial,
       obj_description(ic.oid, 'pg_class') AS comment
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s::regclass
ORDER BY ic.relname
"""

TRIGGERS_SQL = """
SELECT t.tgname::text AS name, pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled::text AS enabled, t.tgconstraint <> 0 AS is_constraint,
       fn.nspname = 'pgpart' AS ours
FROM pg_trigger t
JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace
WHERE t.tgrelid = %s AND NOT t.tgisinternal
ORDER BY t.tgname
"""

POLICIES_SQL = """
SELECT p.polname::text AS name, p.polpermissive AS permissive,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
       CASE WHEN p.polroles = '{0}' THEN NULL
            ELSE (SELECT array_agg(rolname::text ORDER BY rolname) FROM pg_roles
                  WHERE oid = ANY (p.polroles)) END AS roles,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname
"""

COLUMN_ACL_SQL = """
SELECT att.attname::text AS column,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END AS grantee,
       a.privilege_type::text AS privilege, a.is_grantable AS grantable
FROM pg_attribute att, aclexplode(att.attacl) a
WHERE att.attrelid = %s AND att.attacl IS NOT NULL AND NOT att.attisdropped
ORDER BY 1, 2, 3
"""

PUBLICATIONS_SQL = """
SELECT p.pubname::text AS name, p.pubviaroot AS via_root,
       pg_get_expr(pr.prqual, pr.prrelid) AS row_filter,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)) AS columns
FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
WHERE pr.prrelid = %s ORDER BY p.pubname
"""

INCOMING_FK_SQL = """
SELECT con.conname::text AS name, format('%%I.%%I', n.nspname, c.relname) AS referencing_table,
       c.relname::text AS referencing_name, pg_get_constraintdef(con.oid) AS definition
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.confrelid = %s AND con.contype = 'f' AND con.conrelid <> con.confrelid
ORDER BY c.relname, con.conname
"""

VIEWS_SQL = """
SELECT DISTINCT v.oid::bigint AS oid, n.nspname::text AS schema, v.relname::text AS name,
       v.relkind::text AS kind, pg_get_viewdef(v.oid) AS definition,
       coalesce(array(SELECT o FROM unnest(v.reloptions) o WHERE o NOT LIKE 'check_option=%%'),
                '{}')::text[] AS options,
       (SELECT substr(o, 14) FROM unnest(v.reloptions) o WHERE o LIKE 'check_option=%%') AS check_option
FROM pg_depend d
JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
JOIN pg_class v ON v.oid = r.ev_class
JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND v.oid <> d.refobjid
ORDER BY 2, 3
"""

ATOMIC_FUNCTIONS_SQL = """
SELECT DISTINCT p.oid::bigint AS oid, p.oid::regprocedure::text AS signature,
       pg_get_functiondef(p.oid) AS definition
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid AND d.classid = 'pg_proc'::regclass
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND p.prosqlbody IS NOT NULL
ORDER BY 2
"""

# Objects that use the table's row type (functions returning SETOF t, columns of type t).
ROWTYPE_USERS_SQL = """
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       d.classid = 'pg_proc'::regclass AS is_function
FROM pg_depend d JOIN pg_class c ON c.reltype = d.refobjid
WHERE c.oid = %s AND d.refclassid = 'pg_type'::regclass AND d.deptype = 'n'
ORDER BY 1
"""

# Everything else that depends on the table and would follow its OID to <t>_old:
# policies of other tables, rules on other relations, ... Views, atomic functions,
# incoming foreign keys and the table's own objects are handled elsewhere.
OTHER_DEPENDENTS_SQL = """
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) AS object
FROM pg_depend d
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.deptype = 'n'
  AND NOT (d.classid = 'pg_rewrite'::regclass)
  AND NOT (d.classid = 'pg_proc'::regclass)
  AND NOT (d.classid = 'pg_constraint'::regclass AND EXISTS (
        SELECT 1 FROM pg_constraint c WHERE c.oid = d.objid AND (c.conrelid = %s OR c.confrelid = %s)))
  AND NOT (d.classid = 'pg_policy'::regclass AND EXISTS (
        SELECT 1 FROM pg_policy p WHERE p.oid = d.objid AND p.polrelid = %s))
  AND NOT (d.classid = 'pg_trigger'::regclass AND EXISTS (
        SELECT 1 FROM pg_trigger t WHERE t.oid = d.objid AND t.tgrelid = %s))
  AND NOT (d.classid = 'pg_class'::regclass AND EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indexrelid = d.objid AND i.indrelid = %s))
  AND NOT (d.classid = 'pg_attrdef'::regclass AND EXISTS (
        SELECT 1 FROM pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = %s))
  AND NOT (d.classid = 'pg_statistic_ext'::regclass)
ORDER BY 1
""".replace('%s', '%(oid)s')

STATISTICS_SQL = """
SELECT s.stxname::text AS name, pg_get_statisticsobjdef(s.oid) AS definition
FROM pg_statistic_ext s WHERE s.stxrelid = %s ORDER BY 1
"""

RULES_SQL = """
SELECT r.rulename::text AS name FROM pg_rewrite r
WHERE r.ev_class = %s AND r.rulename <> '_RETURN' ORDER BY 1
"""

# Sequences tied to the table's columns: OWNED BY (serial, deptype 'a') or identity ('i').
SEQUENCES_SQL = """
SELECT a.attname::text AS column, format('%%I.%%I', sn.nspname, s.relname) AS sequence,
       sn.nspname::text AS sequence_schema, s.relname::text AS sequence_name,
       CASE d.deptype WHEN 'i' THEN 'identity' ELSE 'owned' END AS kind,
       format_type(q.seqtypid, NULL) AS data_type, q.seqincrement::text AS increment,
       q.seqmin::text AS min_value, q.seqmax::text AS max_value, q.seqstart::text AS start,
       q.seqcache::text AS cache, q.seqcycle AS cycle
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = %s AND d.deptype IN ('a', 'i')
ORDER BY 1
"""

